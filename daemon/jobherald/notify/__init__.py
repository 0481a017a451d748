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
    notify_type,
    reason_count,
    render,
    render_digest,
)
from jobherald.notify.sender import Sender, url_key

__all__ = [
    "Composer",
    "Dispatcher",
    "Item",
    "Message",
    "Sender",
    "advice",
    "notify_type",
    "reason_count",
    "render",
    "render_digest",
    "retry_delay",
    "url_key",
]
