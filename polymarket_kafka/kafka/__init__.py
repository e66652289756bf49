"""Kafka: everything that talks to the broker.

`publisher` (the async shell around librdkafka that the pipeline delivers through),
`settings` (the producer configuration of the specification), `poll_thread` (the thread that
serves librdkafka's callbacks), `statistics` (readiness from librdkafka's statistics),
`connectivity` and `librdkafka_log` (outage bookkeeping and quiet logs), `partition`
(Kafka's murmur2 key → partition). Nothing outside this package imports confluent_kafka.
"""
