"""Notifications: messages from events, apprise to send them, and a lane per notifier URL
that empties the outbox.

This package knows apprise and the outbox; it never talks to a job source.
"""

from jobherald.notify.compose import Composer
from jobherald.notify.lanes import Dispatcher, retry_delay
from jobherald.notify.messages import (
    Item,
    Message,
    advice,
    default_digest,
    default_message,
    notify_type,
    reason_count,
)
from jobherald.notify.sender import Sender, url_key

__all__ = [
    "Composer",
    "Dispatcher",
    "Item",
    "Message",
    "Sender",
    "advice",
    "default_digest",
    "default_message",
    "notify_type",
    "reason_count",
    "retry_delay",
    "url_key",
]
