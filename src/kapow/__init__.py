"""KaPoW, the Kafka → PostgreSQL Writer."""

__version__ = "0.1.0"
