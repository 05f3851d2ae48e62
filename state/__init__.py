"""State: what pkiform has built, on disk (installed as ``pkiform.state``).

`model` holds the frozen data, `secrets` the encryption of private material at rest, `store`
the file itself (atomic writes, backup, lock, step journal).
"""
