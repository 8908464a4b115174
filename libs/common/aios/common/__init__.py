"""AIOS common library: the event spine every service stands on.

Vocabulary: an *event* is an immutable fact; an *aggregate* (``job.<id>``, ``node.<id>``) is the unit of
consistency whose events live on one subject ``aios.evt.<aggregate>``; a *commit* is one JetStream message holding
one or more events of one aggregate, appended atomically; the *version* of an aggregate is the stream sequence of
its last commit (0 when it has none).
"""
