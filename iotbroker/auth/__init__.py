"""Authentication (password file) and authorisation (ACL file); synchronous.

``auth.base`` holds the protocols the broker depends on; ``auth.loader.load_auth``
builds them from the configuration.
"""
