"""Sans-IO CoAP (RFC 7252, 7959, 7641) and one thin asyncio UDP endpoint.

Nothing here knows about LwM2M: the LwM2M server and the device simulator both
stand on these pieces.
"""

from shoal.coap.codes import Code, Type
from shoal.coap.message import Message, MessageFormatError

__all__ = ["Code", "Message", "MessageFormatError", "Type"]
