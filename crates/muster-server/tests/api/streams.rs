//! Server-sent events: following a task's logs and the event feed.
