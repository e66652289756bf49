"""Test and demo helpers, shipped as one named package (like `trio.testing`).

Nothing on the service's runtime path imports this package (a test enforces it): the fake
Polymarket (`fake_polymarket`), loopback HTTP servers (`loopback`), recorded cassettes
(`cassette`, `cassette_server`), the embedded Tansu broker (`local_broker`), the in-process
subscription store (`memory_store`) and the embedded demo (`demo`).
"""
