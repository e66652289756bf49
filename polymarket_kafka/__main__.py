"""`python -m polymarket_kafka` is the `polymarket-kafka` command."""

from polymarket_kafka.cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through the console script
    raise SystemExit(main())
