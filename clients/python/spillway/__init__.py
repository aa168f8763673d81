"""A client for spillway's ack protocol (docs/protocol.md): stdlib only.

    import spillway

    with spillway.Consumer("127.0.0.1:7001") as consumer:
        for msg in consumer:
            print(msg.seq, msg.attempt, msg.body)
            msg.ack()        # or msg.nak(delay_s=5), msg.term("bad"), msg.in_progress()

    with spillway.Producer("127.0.0.1:7000", name="app-7") as producer:
        producer.send(b"hello")
        producer.flush(10)   # confirmed durable
"""

from .consumer import Consumer, Message
from .errors import ProtocolError
from .producer import Producer

__version__ = "0.1.0"
__all__ = ["Consumer", "Message", "Producer", "ProtocolError"]
