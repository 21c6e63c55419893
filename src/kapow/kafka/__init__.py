"""Kafka side: consumer, producer and admin clients, configured in one place."""
