"""The client's errors."""


class ProtocolError(Exception):
    """The relay refused something (an ``ERR <code> <text>`` line or frame),
    or sent bytes this client cannot read (code 400, text saying so).

    After it the connection is closed: the relay closes after every ERR.
    ``code`` is one of docs/protocol.md's table: 400 malformed, 401
    version, 403 wrong role or undeclared group, 408 handshake timeout,
    409 a message not held, 413 too large, 503 draining, 507 full.
    """

    def __init__(self, code, text=""):
        super().__init__(code, text)
        self.code = code
        self.text = text

    def __str__(self):
        return "%d %s" % (self.code, self.text) if self.text else str(self.code)

    @property
    def retryable(self):
        """True when connecting again may work as is (408, 503, 507)."""
        return self.code in (408, 503, 507)
