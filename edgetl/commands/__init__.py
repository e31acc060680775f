"""Sub-commands of the ``edgetl`` CLI; each module exposes ``register(subparsers)``."""
