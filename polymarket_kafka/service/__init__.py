"""The pipeline: subscriptions and Polymarket in, detection, delivery to Kafka out.

`pipeline` runs the stages in one task group joined by bounded memory channels, `ports`
holds the Protocols the stages need from their adapters, `reloader` swaps the rules on SIGHUP.
"""
