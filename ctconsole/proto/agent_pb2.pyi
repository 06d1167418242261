from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("protocol", "ctconsole_version", "cpuinfo_img")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CTCONSOLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CPUINFO_IMG_FIELD_NUMBER: _ClassVar[int]
    protocol: int
    ctconsole_version: str
    cpuinfo_img: bytes
    def __init__(self, protocol: _Optional[int] = ..., ctconsole_version: _Optional[str] = ..., cpuinfo_img: _Optional[bytes] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("protocol", "ctconsole_version", "criu_version", "mem_track", "lazy_pages", "pidfd_store", "kernel", "hostname", "boot_id", "pidns_inode", "netns_inode", "cpuinfo_ok", "cpuinfo_detail", "lazy_selftest_ok", "lazy_selftest_reason", "agent_pid", "addresses")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CTCONSOLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CRIU_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEM_TRACK_FIELD_NUMBER: _ClassVar[int]
    LAZY_PAGES_FIELD_NUMBER: _ClassVar[int]
    PIDFD_STORE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    PIDNS_INODE_FIELD_NUMBER: _ClassVar[int]
    NETNS_INODE_FIELD_NUMBER: _ClassVar[int]
    CPUINFO_OK_FIELD_NUMBER: _ClassVar[int]
    CPUINFO_DETAIL_FIELD_NUMBER: _ClassVar[int]
    LAZY_SELFTEST_OK_FIELD_NUMBER: _ClassVar[int]
    LAZY_SELFTEST_REASON_FIELD_NUMBER: _ClassVar[int]
    AGENT_PID_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    protocol: int
    ctconsole_version: str
    criu_version: str
    mem_track: bool
    lazy_pages: bool
    pidfd_store: bool
    kernel: str
    hostname: str
    boot_id: str
    pidns_inode: int
    netns_inode: int
    cpuinfo_ok: bool
    cpuinfo_detail: str
    lazy_selftest_ok: bool
    lazy_selftest_reason: str
    agent_pid: int
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, protocol: _Optional[int] = ..., ctconsole_version: _Optional[str] = ..., criu_version: _Optional[str] = ..., mem_track: _Optional[bool] = ..., lazy_pages: _Optional[bool] = ..., pidfd_store: _Optional[bool] = ..., kernel: _Optional[str] = ..., hostname: _Optional[str] = ..., boot_id: _Optional[str] = ..., pidns_inode: _Optional[int] = ..., netns_inode: _Optional[int] = ..., cpuinfo_ok: _Optional[bool] = ..., cpuinfo_detail: _Optional[str] = ..., lazy_selftest_ok: _Optional[bool] = ..., lazy_selftest_reason: _Optional[str] = ..., agent_pid: _Optional[int] = ..., addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class InventoryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InventoryReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class CheckReply(_message.Message):
    __slots__ = ("verdict", "json")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    verdict: str
    json: str
    def __init__(self, verdict: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class PreflightRequest(_message.Message):
    __slots__ = ("bridges", "paths", "memory_bytes")
    BRIDGES_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    bridges: _containers.RepeatedScalarFieldContainer[str]
    paths: _containers.RepeatedScalarFieldContainer[str]
    memory_bytes: int
    def __init__(self, bridges: _Optional[_Iterable[str]] = ..., paths: _Optional[_Iterable[str]] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class PreflightReply(_message.Message):
    __slots__ = ("ok", "problems")
    OK_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ok: _Optional[bool] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class HostProbeRequest(_message.Message):
    __slots__ = ("criu_check", "cpuinfo_img", "images_space", "paths", "links", "policy", "restore_options_json", "inherit", "probe_name", "image_bytes", "setup_ns", "pids", "ports", "cgroups")
    CRIU_CHECK_FIELD_NUMBER: _ClassVar[int]
    CPUINFO_IMG_FIELD_NUMBER: _ClassVar[int]
    IMAGES_SPACE_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RESTORE_OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    INHERIT_FIELD_NUMBER: _ClassVar[int]
    PROBE_NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SETUP_NS_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    CGROUPS_FIELD_NUMBER: _ClassVar[int]
    criu_check: bool
    cpuinfo_img: bytes
    images_space: bool
    paths: _containers.RepeatedScalarFieldContainer[str]
    links: _containers.RepeatedScalarFieldContainer[str]
    policy: bool
    restore_options_json: str
    inherit: _containers.RepeatedCompositeFieldContainer[InheritFd]
    probe_name: str
    image_bytes: int
    setup_ns: _containers.RepeatedCompositeFieldContainer[SetupNsAction]
    pids: _containers.RepeatedScalarFieldContainer[int]
    ports: _containers.RepeatedCompositeFieldContainer[PortQuery]
    cgroups: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, criu_check: _Optional[bool] = ..., cpuinfo_img: _Optional[bytes] = ..., images_space: _Optional[bool] = ..., paths: _Optional[_Iterable[str]] = ..., links: _Optional[_Iterable[str]] = ..., policy: _Optional[bool] = ..., restore_options_json: _Optional[str] = ..., inherit: _Optional[_Iterable[_Union[InheritFd, _Mapping]]] = ..., probe_name: _Optional[str] = ..., image_bytes: _Optional[int] = ..., setup_ns: _Optional[_Iterable[_Union[SetupNsAction, _Mapping]]] = ..., pids: _Optional[_Iterable[int]] = ..., ports: _Optional[_Iterable[_Union[PortQuery, _Mapping]]] = ..., cgroups: _Optional[_Iterable[str]] = ...) -> None: ...

class PortQuery(_message.Message):
    __slots__ = ("proto", "address", "port")
    PROTO_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    proto: str
    address: str
    port: int
    def __init__(self, proto: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class PortInfo(_message.Message):
    __slots__ = ("proto", "address", "port", "holder")
    PROTO_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    proto: str
    address: str
    port: int
    holder: str
    def __init__(self, proto: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., holder: _Optional[str] = ...) -> None: ...

class CgroupInfo(_message.Message):
    __slots__ = ("path", "exists", "procs")
    PATH_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    PROCS_FIELD_NUMBER: _ClassVar[int]
    path: str
    exists: bool
    procs: int
    def __init__(self, path: _Optional[str] = ..., exists: _Optional[bool] = ..., procs: _Optional[int] = ...) -> None: ...

class PolicyRefusal(_message.Message):
    __slots__ = ("key", "message")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    message: str
    def __init__(self, key: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class PathInfo(_message.Message):
    __slots__ = ("path", "kind")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: str
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class LinkInfo(_message.Message):
    __slots__ = ("name", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class HostProbeReply(_message.Message):
    __slots__ = ("criu_check_ok", "criu_check_detail", "cpuinfo_ok", "cpuinfo_detail", "images_dir", "images_free", "paths", "links", "refusals", "policy_lines", "policy_error", "busy_pids", "busy_ports", "cgroups")
    CRIU_CHECK_OK_FIELD_NUMBER: _ClassVar[int]
    CRIU_CHECK_DETAIL_FIELD_NUMBER: _ClassVar[int]
    CPUINFO_OK_FIELD_NUMBER: _ClassVar[int]
    CPUINFO_DETAIL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_DIR_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FREE_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    POLICY_LINES_FIELD_NUMBER: _ClassVar[int]
    POLICY_ERROR_FIELD_NUMBER: _ClassVar[int]
    BUSY_PIDS_FIELD_NUMBER: _ClassVar[int]
    BUSY_PORTS_FIELD_NUMBER: _ClassVar[int]
    CGROUPS_FIELD_NUMBER: _ClassVar[int]
    criu_check_ok: bool
    criu_check_detail: str
    cpuinfo_ok: bool
    cpuinfo_detail: str
    images_dir: str
    images_free: int
    paths: _containers.RepeatedCompositeFieldContainer[PathInfo]
    links: _containers.RepeatedCompositeFieldContainer[LinkInfo]
    refusals: _containers.RepeatedCompositeFieldContainer[PolicyRefusal]
    policy_lines: _containers.RepeatedScalarFieldContainer[str]
    policy_error: str
    busy_pids: _containers.RepeatedScalarFieldContainer[int]
    busy_ports: _containers.RepeatedCompositeFieldContainer[PortInfo]
    cgroups: _containers.RepeatedCompositeFieldContainer[CgroupInfo]
    def __init__(self, criu_check_ok: _Optional[bool] = ..., criu_check_detail: _Optional[str] = ..., cpuinfo_ok: _Optional[bool] = ..., cpuinfo_detail: _Optional[str] = ..., images_dir: _Optional[str] = ..., images_free: _Optional[int] = ..., paths: _Optional[_Iterable[_Union[PathInfo, _Mapping]]] = ..., links: _Optional[_Iterable[_Union[LinkInfo, _Mapping]]] = ..., refusals: _Optional[_Iterable[_Union[PolicyRefusal, _Mapping]]] = ..., policy_lines: _Optional[_Iterable[str]] = ..., policy_error: _Optional[str] = ..., busy_pids: _Optional[_Iterable[int]] = ..., busy_ports: _Optional[_Iterable[_Union[PortInfo, _Mapping]]] = ..., cgroups: _Optional[_Iterable[_Union[CgroupInfo, _Mapping]]] = ...) -> None: ...

class PrepareRequest(_message.Message):
    __slots__ = ("migration_id", "page_server", "page_server_address", "shared_token", "lazy_pages")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SHARED_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LAZY_PAGES_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    page_server: bool
    page_server_address: str
    shared_token: str
    lazy_pages: bool
    def __init__(self, migration_id: _Optional[str] = ..., page_server: _Optional[bool] = ..., page_server_address: _Optional[str] = ..., shared_token: _Optional[str] = ..., lazy_pages: _Optional[bool] = ...) -> None: ...

class PrepareReply(_message.Message):
    __slots__ = ("images_dir", "page_server_address", "page_server_port", "page_server_pid", "shared_fs", "page_socket")
    IMAGES_DIR_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_PORT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_PID_FIELD_NUMBER: _ClassVar[int]
    SHARED_FS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SOCKET_FIELD_NUMBER: _ClassVar[int]
    images_dir: str
    page_server_address: str
    page_server_port: int
    page_server_pid: int
    shared_fs: bool
    page_socket: str
    def __init__(self, images_dir: _Optional[str] = ..., page_server_address: _Optional[str] = ..., page_server_port: _Optional[int] = ..., page_server_pid: _Optional[int] = ..., shared_fs: _Optional[bool] = ..., page_socket: _Optional[str] = ...) -> None: ...

class LinkRequest(_message.Message):
    __slots__ = ("round", "names")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    round: int
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round: _Optional[int] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class LinkReply(_message.Message):
    __slots__ = ("files", "bytes")
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    files: int
    bytes: int
    def __init__(self, files: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("name", "offset", "data", "last", "round")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    name: str
    offset: int
    data: bytes
    last: bool
    round: int
    def __init__(self, name: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., round: _Optional[int] = ...) -> None: ...

class FileAck(_message.Message):
    __slots__ = ("name", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class InheritFd(_message.Message):
    __slots__ = ("key", "how", "path", "mode", "perm")
    KEY_FIELD_NUMBER: _ClassVar[int]
    HOW_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PERM_FIELD_NUMBER: _ClassVar[int]
    key: str
    how: str
    path: str
    mode: str
    perm: int
    def __init__(self, key: _Optional[str] = ..., how: _Optional[str] = ..., path: _Optional[str] = ..., mode: _Optional[str] = ..., perm: _Optional[int] = ...) -> None: ...

class RoundRequest(_message.Message):
    __slots__ = ("round", "parent", "page_server", "page_server_address")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    round: int
    parent: int
    page_server: bool
    page_server_address: str
    def __init__(self, round: _Optional[int] = ..., parent: _Optional[int] = ..., page_server: _Optional[bool] = ..., page_server_address: _Optional[str] = ...) -> None: ...

class RoundReply(_message.Message):
    __slots__ = ("images_dir", "page_server_address", "page_server_port", "page_server_pid", "page_socket")
    IMAGES_DIR_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_PORT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_PID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SOCKET_FIELD_NUMBER: _ClassVar[int]
    images_dir: str
    page_server_address: str
    page_server_port: int
    page_server_pid: int
    page_socket: str
    def __init__(self, images_dir: _Optional[str] = ..., page_server_address: _Optional[str] = ..., page_server_port: _Optional[int] = ..., page_server_pid: _Optional[int] = ..., page_socket: _Optional[str] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("options_json", "probe_argv", "probe_timeout", "timeout", "page_server_wait", "inherit", "lazy", "lazy_address", "lazy_port", "hold", "setup_ns", "probe_name")
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    PROBE_ARGV_FIELD_NUMBER: _ClassVar[int]
    PROBE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_WAIT_FIELD_NUMBER: _ClassVar[int]
    INHERIT_FIELD_NUMBER: _ClassVar[int]
    LAZY_FIELD_NUMBER: _ClassVar[int]
    LAZY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LAZY_PORT_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    SETUP_NS_FIELD_NUMBER: _ClassVar[int]
    PROBE_NAME_FIELD_NUMBER: _ClassVar[int]
    options_json: str
    probe_argv: _containers.RepeatedScalarFieldContainer[str]
    probe_timeout: float
    timeout: float
    page_server_wait: float
    inherit: _containers.RepeatedCompositeFieldContainer[InheritFd]
    lazy: bool
    lazy_address: str
    lazy_port: int
    hold: bool
    setup_ns: _containers.RepeatedCompositeFieldContainer[SetupNsAction]
    probe_name: str
    def __init__(self, options_json: _Optional[str] = ..., probe_argv: _Optional[_Iterable[str]] = ..., probe_timeout: _Optional[float] = ..., timeout: _Optional[float] = ..., page_server_wait: _Optional[float] = ..., inherit: _Optional[_Iterable[_Union[InheritFd, _Mapping]]] = ..., lazy: _Optional[bool] = ..., lazy_address: _Optional[str] = ..., lazy_port: _Optional[int] = ..., hold: _Optional[bool] = ..., setup_ns: _Optional[_Iterable[_Union[SetupNsAction, _Mapping]]] = ..., probe_name: _Optional[str] = ...) -> None: ...

class SetupNsAction(_message.Message):
    __slots__ = ("action", "interface", "pf", "vfs", "any_vf")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    PF_FIELD_NUMBER: _ClassVar[int]
    VFS_FIELD_NUMBER: _ClassVar[int]
    ANY_VF_FIELD_NUMBER: _ClassVar[int]
    action: str
    interface: str
    pf: str
    vfs: _containers.RepeatedScalarFieldContainer[int]
    any_vf: bool
    def __init__(self, action: _Optional[str] = ..., interface: _Optional[str] = ..., pf: _Optional[str] = ..., vfs: _Optional[_Iterable[int]] = ..., any_vf: _Optional[bool] = ...) -> None: ...

class RestoreReply(_message.Message):
    __slots__ = ("pid", "stats_restore", "elapsed", "console_socket", "probe_output", "lazy", "timeline")
    PID_FIELD_NUMBER: _ClassVar[int]
    STATS_RESTORE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    CONSOLE_SOCKET_FIELD_NUMBER: _ClassVar[int]
    PROBE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    LAZY_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    pid: int
    stats_restore: bytes
    elapsed: float
    console_socket: str
    probe_output: str
    lazy: bool
    timeline: str
    def __init__(self, pid: _Optional[int] = ..., stats_restore: _Optional[bytes] = ..., elapsed: _Optional[float] = ..., console_socket: _Optional[str] = ..., probe_output: _Optional[str] = ..., lazy: _Optional[bool] = ..., timeline: _Optional[str] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("migration_id", "runtime_facts")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FACTS_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    runtime_facts: str
    def __init__(self, migration_id: _Optional[str] = ..., runtime_facts: _Optional[str] = ...) -> None: ...

class CommitReply(_message.Message):
    __slots__ = ("journal_note", "lazy_ok", "lazy_detail", "adoption")
    JOURNAL_NOTE_FIELD_NUMBER: _ClassVar[int]
    LAZY_OK_FIELD_NUMBER: _ClassVar[int]
    LAZY_DETAIL_FIELD_NUMBER: _ClassVar[int]
    ADOPTION_FIELD_NUMBER: _ClassVar[int]
    journal_note: str
    lazy_ok: bool
    lazy_detail: str
    adoption: str
    def __init__(self, journal_note: _Optional[str] = ..., lazy_ok: _Optional[bool] = ..., lazy_detail: _Optional[str] = ..., adoption: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("state", "pid", "running")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    state: str
    pid: int
    running: bool
    def __init__(self, state: _Optional[str] = ..., pid: _Optional[int] = ..., running: _Optional[bool] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("migration_id",)
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    def __init__(self, migration_id: _Optional[str] = ...) -> None: ...

class AbortReply(_message.Message):
    __slots__ = ("cleaned",)
    CLEANED_FIELD_NUMBER: _ClassVar[int]
    cleaned: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cleaned: _Optional[_Iterable[str]] = ...) -> None: ...

class ByeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ByeReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CarryItem(_message.Message):
    __slots__ = ("key", "path", "bytes", "files", "marker", "boot_id", "dev", "ino")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    MARKER_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    DEV_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    key: str
    path: str
    bytes: int
    files: int
    marker: str
    boot_id: str
    dev: int
    ino: int
    def __init__(self, key: _Optional[str] = ..., path: _Optional[str] = ..., bytes: _Optional[int] = ..., files: _Optional[int] = ..., marker: _Optional[str] = ..., boot_id: _Optional[str] = ..., dev: _Optional[int] = ..., ino: _Optional[int] = ...) -> None: ...

class CarryRequest(_message.Message):
    __slots__ = ("migration_id", "mode", "items", "dry_run")
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    migration_id: str
    mode: str
    items: _containers.RepeatedCompositeFieldContainer[CarryItem]
    dry_run: bool
    def __init__(self, migration_id: _Optional[str] = ..., mode: _Optional[str] = ..., items: _Optional[_Iterable[_Union[CarryItem, _Mapping]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class CarryTarget(_message.Message):
    __slots__ = ("key", "action", "path", "reason")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    key: str
    action: str
    path: str
    reason: str
    def __init__(self, key: _Optional[str] = ..., action: _Optional[str] = ..., path: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CarryReply(_message.Message):
    __slots__ = ("targets", "problems", "free_bytes")
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedCompositeFieldContainer[CarryTarget]
    problems: _containers.RepeatedScalarFieldContainer[str]
    free_bytes: int
    def __init__(self, targets: _Optional[_Iterable[_Union[CarryTarget, _Mapping]]] = ..., problems: _Optional[_Iterable[str]] = ..., free_bytes: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "details")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    details: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., details: _Optional[_Iterable[str]] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("id", "hello", "inventory", "check", "preflight", "prepare", "file", "restore", "commit", "status", "abort", "bye", "host_probe", "round", "link", "carry")
    ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    PREFLIGHT_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    BYE_FIELD_NUMBER: _ClassVar[int]
    HOST_PROBE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    CARRY_FIELD_NUMBER: _ClassVar[int]
    id: int
    hello: Hello
    inventory: InventoryRequest
    check: CheckRequest
    preflight: PreflightRequest
    prepare: PrepareRequest
    file: FileChunk
    restore: RestoreRequest
    commit: CommitRequest
    status: StatusRequest
    abort: AbortRequest
    bye: ByeRequest
    host_probe: HostProbeRequest
    round: RoundRequest
    link: LinkRequest
    carry: CarryRequest
    def __init__(self, id: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., inventory: _Optional[_Union[InventoryRequest, _Mapping]] = ..., check: _Optional[_Union[CheckRequest, _Mapping]] = ..., preflight: _Optional[_Union[PreflightRequest, _Mapping]] = ..., prepare: _Optional[_Union[PrepareRequest, _Mapping]] = ..., file: _Optional[_Union[FileChunk, _Mapping]] = ..., restore: _Optional[_Union[RestoreRequest, _Mapping]] = ..., commit: _Optional[_Union[CommitRequest, _Mapping]] = ..., status: _Optional[_Union[StatusRequest, _Mapping]] = ..., abort: _Optional[_Union[AbortRequest, _Mapping]] = ..., bye: _Optional[_Union[ByeRequest, _Mapping]] = ..., host_probe: _Optional[_Union[HostProbeRequest, _Mapping]] = ..., round: _Optional[_Union[RoundRequest, _Mapping]] = ..., link: _Optional[_Union[LinkRequest, _Mapping]] = ..., carry: _Optional[_Union[CarryRequest, _Mapping]] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("id", "hello", "inventory", "check", "preflight", "prepare", "file", "restore", "commit", "status", "abort", "bye", "host_probe", "round", "link", "carry", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    PREFLIGHT_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    BYE_FIELD_NUMBER: _ClassVar[int]
    HOST_PROBE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    LINK_FIELD_NUMBER: _ClassVar[int]
    CARRY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    hello: HelloReply
    inventory: InventoryReply
    check: CheckReply
    preflight: PreflightReply
    prepare: PrepareReply
    file: FileAck
    restore: RestoreReply
    commit: CommitReply
    status: StatusReply
    abort: AbortReply
    bye: ByeReply
    host_probe: HostProbeReply
    round: RoundReply
    link: LinkReply
    carry: CarryReply
    error: Error
    def __init__(self, id: _Optional[int] = ..., hello: _Optional[_Union[HelloReply, _Mapping]] = ..., inventory: _Optional[_Union[InventoryReply, _Mapping]] = ..., check: _Optional[_Union[CheckReply, _Mapping]] = ..., preflight: _Optional[_Union[PreflightReply, _Mapping]] = ..., prepare: _Optional[_Union[PrepareReply, _Mapping]] = ..., file: _Optional[_Union[FileAck, _Mapping]] = ..., restore: _Optional[_Union[RestoreReply, _Mapping]] = ..., commit: _Optional[_Union[CommitReply, _Mapping]] = ..., status: _Optional[_Union[StatusReply, _Mapping]] = ..., abort: _Optional[_Union[AbortReply, _Mapping]] = ..., bye: _Optional[_Union[ByeReply, _Mapping]] = ..., host_probe: _Optional[_Union[HostProbeReply, _Mapping]] = ..., round: _Optional[_Union[RoundReply, _Mapping]] = ..., link: _Optional[_Union[LinkReply, _Mapping]] = ..., carry: _Optional[_Union[CarryReply, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
