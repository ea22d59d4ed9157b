"""Charger-cluster gateway: one OCPP 1.6J charge point for a cluster of Modbus slave chargers."""

__version__ = "0.1.0"
