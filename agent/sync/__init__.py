"""Synchronisation with the platform: MQTT events and commands, tus uploads over HTTPS."""
