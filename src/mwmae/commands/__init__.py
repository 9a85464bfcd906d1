"""Sub-commands of the `mwmae` CLI: one module per stage, each exposing `register(subparsers)`."""
