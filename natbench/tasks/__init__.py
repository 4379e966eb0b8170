"""Task kinds: classification (now), reid and detection (later issues)."""
