"""SQLite store of the appliance: schema, migrations, and the Store (one repository per aggregate behind it)."""

from tunevault.server.store.records import DatasetRecord, EventRecord, FeedbackRecord, JobRecord, TokenRecord
from tunevault.server.store.repository import Store
from tunevault.server.store.states import JobState

__all__ = ["DatasetRecord", "EventRecord", "FeedbackRecord", "JobRecord", "JobState", "Store", "TokenRecord"]
