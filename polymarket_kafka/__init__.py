"""polymarket-kafka: detect conviction changes on Polymarket and publish them to Kafka."""

__version__ = "0.1.0"
