"""MQTT transport: broker URLs, the paho client wrapper with a durable outbox, and brokers.

Modules, one job each (import the one you need; nothing heavy is imported here):

- ``url``        parse ``mqtt://`` / ``mqtts://`` broker URLs (pure)
- ``mqtt``       ``MqttTransport``: paho-mqtt 2.x client, QoS 1, persistent session, reconnects (I/O)
- ``outbox``     ``Outbox``: messages on disk until the broker acknowledges them (I/O)
- ``broker``     ``EmbeddedBroker``: an in-process amqtt broker (I/O)
- ``mosquitto``  Mosquitto config, ACL and password files, and a managed process (I/O)
- ``certs``      a CA, server and client certificates for TLS listeners (I/O)
- ``dynsec``     Mosquitto's dynamic-security plugin: its file, password hashes, control commands
- ``ports``      free loopback ports and waiting for a listener (I/O)

Never imports torch or any hdus_edge package but ``errors`` (it moves bytes; it does not read them).
"""
