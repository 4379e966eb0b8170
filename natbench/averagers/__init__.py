"""Weight averagers (at most one per run): ``update(model)`` after every optimizer step, ``averaged(model)`` is evaluated."""
