"""The admin room: an HTTP API and a live dashboard for operators (docs/admin.md).

It reads the engine's state and acts through the engine's methods (kick, end a session,
delete a retained message, publish, bans at CONNECT); ``server/broker.py`` wires it in
when ``admin.enabled`` is true, and nothing here is imported otherwise.
"""
