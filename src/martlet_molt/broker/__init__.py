"""Sharing runs between gateway instances: `create_broker` picks the implementation."""

from martlet_molt.broker.base import Broker, UnknownBrokerUrl, create_broker

__all__ = ["Broker", "UnknownBrokerUrl", "create_broker"]
