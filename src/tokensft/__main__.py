"""`python -m tokensft` is the `tokensft` console script."""

from tokensft.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
