"""Every table the uploader knows, importable from one place."""

from uploader.db.models.base import Base
from uploader.db.models.devices import Device, MicrophoneProfile
from uploader.db.models.recordings import Recording
from uploader.db.models.system import SystemConfig
from uploader.db.models.uploader import (
    PairState,
    RemoteCursor,
    RemoteObject,
    RemoteStatus,
    StorageRemote,
    Upload,
)

__all__ = [
    "Base",
    "Device",
    "MicrophoneProfile",
    "PairState",
    "Recording",
    "RemoteCursor",
    "RemoteObject",
    "RemoteStatus",
    "StorageRemote",
    "SystemConfig",
    "Upload",
]
