"""``python -m controller_ext``: the reconcile loop, configured from the environment."""

from controller_ext.service import main

if __name__ == "__main__":
    main()
