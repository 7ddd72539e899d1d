"""The client side of TLS towards a remote broker (MQTT 5.0 §5.4.9, "TLS").

Certificate verification (chain and host name) is on unless ``verify: false``; the CA
file replaces the system's trust store when given; a client certificate is sent when
``certfile`` and ``keyfile`` are set; ALPN protocols and SNI name are optional.
"""

from __future__ import annotations

import ssl

from iotbroker.config import BridgeTlsConfig


def client_context(cfg: BridgeTlsConfig) -> ssl.SSLContext:
    """An :class:`ssl.SSLContext` for connecting to the remote broker."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.cafile)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if cfg.min_version == "TLSv1.3"
                           else ssl.TLSVersion.TLSv1_2)
    if not cfg.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.certfile is not None and cfg.keyfile is not None:
        ctx.load_cert_chain(cfg.certfile, cfg.keyfile, password=cfg.keyfile_password)
    if cfg.ciphers:
        ctx.set_ciphers(cfg.ciphers)
    if cfg.alpn:
        ctx.set_alpn_protocols(list(cfg.alpn))
    return ctx
