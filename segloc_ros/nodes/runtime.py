"""What every segloc node does around its own logic: the ROS 2 lifecycle, start-up and shutdown,
a worker thread behind a latest-wins slot (so a slow stage drops old frames instead of queueing
them without bound), frame statistics, and /diagnostics.

Lifecycle (`ManagedNode`): constructing a node only declares its parameters; `configure` loads
the heavy parts (model, map) and creates publishers, and fails with the reason logged (a missing
map leaves the node unconfigured and running, instead of a crash loop); `activate` subscribes, so
no frame is processed before; `deactivate` unsubscribes; `cleanup` releases the model and map.
`segloc_ros.nodes.lifecycle_manager` drives the transitions for both launchers.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node

from segloc_core.errors import SeglocError
from segloc_ros.params import NODE_PARAMS, declare

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """One pending item; putting a new one replaces (drops) the old. A worker thread takes them."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def count_dropped(self, n: int) -> None:
        with self._cond:
            self.dropped += n

    def take(self, timeout_s: float = 0.2) -> T | None:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class StampGuard:
    """What a frame's stamp means for a node's state, the way tf2 treats its clock.

    - after the last accepted stamp: in order ("ok");
    - at most `jump_back_s` before it: repeated or reordered ("skip");
    - more than `jump_back_s` before it: time jumped back (a looping or second bag replay, a
      simulator restart): the node resets its state and goes on ("reset"), as tf2 clears its
      buffer on a detected jump back;
    - more than `max_ahead_s` after the node's clock (when the clock runs): a bad stamp ("skip")
      that must not become the last one, or every later good frame would look out of order.
    Nothing changes until the caller `accept`s a stamp."""

    def __init__(self, max_ahead_s: float = 5.0, jump_back_s: float = 1.0) -> None:
        self.max_ahead_ns, self.jump_back_ns = int(max_ahead_s * 1e9), int(jump_back_s * 1e9)
        self.last_ns = -1

    def check(self, stamp_ns: int, now_ns: int) -> tuple[str, str]:
        if now_ns > 0 and stamp_ns > now_ns + self.max_ahead_ns:
            return "skip", (f"stamp {stamp_ns * 1e-9:.3f} s is {(stamp_ns - now_ns) * 1e-9:.1f} s ahead of "
                            "this node's clock (a bad stamp, or a clock not synchronised)")
        if self.last_ns >= 0 and stamp_ns <= self.last_ns:
            back = self.last_ns - stamp_ns
            if back > self.jump_back_ns:
                return "reset", (f"time jumped back {back * 1e-9:.1f} s (bag loop, new replay or "
                                 "simulator restart): state reset")
            return "skip", (f"stamp {stamp_ns * 1e-9:.3f} s is not after the last one "
                            f"({self.last_ns * 1e-9:.3f} s): out of order or repeated")
        return "ok", ""

    def accept(self, stamp_ns: int) -> None:
        self.last_ns = stamp_ns

    def reset(self) -> None:
        self.last_ns = -1


class FrameStats:
    """Counts and latencies of one node's frames, published as a DiagnosticStatus."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received = self.processed = self.skipped = 0
        self.last_skip_reason = ""
        self._latency_ms: deque[float] = deque(maxlen=200)
        self._done_at: deque[float] = deque(maxlen=200)
        self._logged: dict[str, float] = {}
        self._lock = threading.Lock()

    def done(self, latency_ms: float) -> None:
        with self._lock:
            self.processed += 1
            self._latency_ms.append(latency_ms)
            self._done_at.append(time.monotonic())

    def skip(self, reason: str, period_s: float = 5.0) -> bool:
        """Count a skipped frame; True when it should be logged: a kind of reason not seen in the
        last `period_s` (numbers ignored), so a new problem shows at once and a repeated one is
        throttled."""
        kind = re.sub(r"[-+]?\d[\d.e+-]*", "#", reason)
        now = time.monotonic()
        with self._lock:
            self.skipped += 1
            self.last_skip_reason = reason
            if now - self._logged.get(kind, -1e9) < period_s:
                return False
            self._logged[kind] = now
            return True

    def status(self, dropped: int, extra: dict[str, str] | None = None) -> DiagnosticStatus:
        with self._lock:
            lat = np.array(self._latency_ms) if self._latency_ms else np.zeros(1)
            span = self._done_at[-1] - self._done_at[0] if len(self._done_at) > 1 else 0.0
            rate = (len(self._done_at) - 1) / span if span > 0 else 0.0
            values = {"received": self.received, "processed": self.processed,
                      "dropped (latest wins)": dropped, "skipped (bad input)": self.skipped,
                      "last skip reason": self.last_skip_reason or "-",
                      "rate_hz": f"{rate:.2f}", "latency_p50_ms": f"{np.percentile(lat, 50):.1f}",
                      "latency_p95_ms": f"{np.percentile(lat, 95):.1f}", **(extra or {})}
            level = DiagnosticStatus.WARN if self.skipped and self.last_skip_reason else \
                DiagnosticStatus.OK
        return DiagnosticStatus(level=level, name=self.name, hardware_id="segloc",
                                message=self.last_skip_reason or "ok",
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def _header(node: Node):
    from std_msgs.msg import Header

    return Header(stamp=node.get_clock().now().to_msg())


class FrameWorker(Generic[T]):
    """A thread that handles the items put into a latest-wins slot until closed; an unexpected
    exception is logged and that frame skipped, so the node keeps running."""

    def __init__(self, node: Node, handle: Callable[[T], None]) -> None:
        self.slot: LatestSlot[T] = LatestSlot()
        self._node, self._handle = node, handle
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"{node.get_name()}_worker")
        self._thread.start()

    def put(self, item: T) -> None:
        self.slot.put(item)

    @property
    def dropped(self) -> int:
        return self.slot.dropped

    def count_dropped(self, n: int) -> None:
        """Frames superseded before reaching the slot (e.g. while pairing) count as dropped too."""
        self.slot.count_dropped(n)

    def _loop(self) -> None:
        while not self.slot.closed:
            item = self.slot.take()
            if item is None:
                continue
            try:
                self._handle(item)
            except Exception as exc:  # noqa: BLE001 - a node must survive any single frame
                self._node.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        self.slot.close()
        self._thread.join(timeout=5.0)


class ManagedNode(LifecycleNode):
    """Lifecycle plumbing shared by the segloc nodes (see the module docstring). A node implements
    `setup` (load, create publishers with `publisher`; raise SeglocError to fail configure),
    `connect` (create and return its subscriptions, timers and services), `process` (one frame,
    on the worker thread) and optionally `release` and `diagnostics_extra`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.p = declare(self, NODE_PARAMS[name])
        self.stats = FrameStats(f"segloc: {name}")
        self.worker: FrameWorker | None = None
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._publishers_made: list = []
        self._connected: list = []

    # -- what a node implements --------------------------------------------------------------
    def setup(self) -> None:
        raise NotImplementedError

    def connect(self) -> list:
        raise NotImplementedError

    def process(self, item) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Drop what `setup` loaded (publishers are destroyed by the base class)."""

    def diagnostics_extra(self) -> dict[str, str]:
        return {}

    def publisher(self, msg_type, topic: str, qos):
        """A lifecycle publisher (silent unless active), destroyed again on cleanup."""
        pub = self.create_lifecycle_publisher(msg_type, topic, qos)
        self._publishers_made.append(pub)
        return pub

    # -- transitions ---------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.setup()
        except SeglocError as exc:
            self.get_logger().error(f"cannot configure: {exc}")
            self._release_all()
            return TransitionCallbackReturn.FAILURE
        self.worker = FrameWorker(self, self.process)
        self.get_logger().info("configured")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._connected = [*self.connect(), self.create_timer(1.0, self._publish_diagnostics)]
        result = super().on_activate(state)
        self.get_logger().info("active")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._disconnect()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_all()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._disconnect()
        self._release_all()
        return super().on_shutdown(state)

    def _disconnect(self) -> None:
        for entity in self._connected:
            for destroy in (self.destroy_subscription, self.destroy_timer, self.destroy_service):
                if destroy(entity):
                    break
        self._connected = []

    def _release_all(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        for pub in self._publishers_made:
            self.destroy_lifecycle_publisher(pub)
        self._publishers_made = []
        self.release()

    def _publish_diagnostics(self) -> None:
        status = self.stats.status(self.worker.dropped if self.worker else 0,
                                   self.diagnostics_extra())
        self._diagnostics.publish(DiagnosticArray(header=_header(self), status=[status]))


def quiet_shutdown() -> None:
    """From here on a further SIGINT (a terminal's second one, the launcher's) is ignored: the
    node is already stopping, and a KeyboardInterrupt inside destroy_node() would print a
    traceback and skip the rest of the cleanup."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def spin_node(factory: Callable[[], Node]) -> int:
    """rclpy init, build the node, spin until SIGINT/SIGTERM, stop its `worker` (if any);
    exit code 0, or 4 when the node cannot start (bad parameters: the log says why)."""
    rclpy.init(args=sys.argv)
    node = None
    try:
        node = factory()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except SeglocError as exc:
        (node.get_logger() if node else rclpy.logging.get_logger("segloc")).fatal(str(exc))
        return exc.exit_code
    except Exception:
        # a SIGINT while the node is being built makes rclpy shut the context down under its
        # constructor (RCLError "the given context is not valid"): a stop, not a crash
        if rclpy.ok():
            raise
    finally:
        quiet_shutdown()
        if node is not None:
            worker = getattr(node, "worker", None)
            if worker is not None:
                worker.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
