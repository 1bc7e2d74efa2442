"""ESA SNAP ``gpt`` at the process boundary: check a graph, build its command line, run it.

Graphs (``snap/*.xml``) take every variable part as ``${name}``, passed as ``-Pname=value``
(STYLE R11): the XML is never edited. ``gpt`` runs from an argument list (no shell) with its
output streamed line by line into the task log; JVM heap (``-Xmx`` through
``_JAVA_OPTIONS``, which every JVM honours, as ``gpt.vmoptions`` lives in the SNAP install),
tile cache (``-c``) and threads (``-q``) come from the deployment. A missing ``gpt``, an exit
code other than 0 and a timeout raise :class:`~cbm_tasks.errors.SnapError` with the graph, the
product and the end of gpt's output.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET  # noqa: S405 - our own graph files
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cbm_tasks.card.errors import SnapNotInstalledError
from cbm_tasks.errors import ConfigError, SnapError

__all__ = ["GptSettings", "GraphNode", "SnapGraph", "gpt_command", "read_graph", "run_gpt"]

log = logging.getLogger(__name__)

_PARAM = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TAIL_LINES = 30


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One node of a graph: its id, operator and the ids of its source nodes (in order)."""

    node_id: str
    operator: str
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SnapGraph:
    """A checked SNAP graph file.

    Attributes:
        path: the XML file.
        graph_id: the ``<graph id=...>``.
        nodes: nodes in file order.
        parameters: every ``${name}`` the graph uses.
    """

    path: Path
    graph_id: str
    nodes: tuple[GraphNode, ...]
    parameters: frozenset[str]

    def chain(self) -> list[str]:
        """Return the operators in processing order (sources before the nodes that read them)."""
        done: list[str] = []
        by_id = {node.node_id: node for node in self.nodes}

        def visit(node_id: str) -> None:
            if node_id in done:
                return
            for source in by_id[node_id].sources:
                visit(source)
            done.append(node_id)

        for node in self.nodes:
            visit(node.node_id)
        return [by_id[node_id].operator for node_id in done]


def read_graph(path: Path) -> SnapGraph:
    """Parse and check a SNAP graph: ``<graph>`` with a version, nodes with an operator, sources that exist, no cycle.

    Raises:
        ConfigError: the file is missing, not XML, or not a valid graph (the problem named).
    """
    try:
        root = ET.parse(path).getroot()  # noqa: S314 - see the import
    except (OSError, ET.ParseError) as err:
        raise ConfigError(f"SNAP graph {path}: cannot read it: {err}") from err
    if root.tag != "graph" or not root.get("id") or root.findtext("version") is None:
        raise ConfigError(f"SNAP graph {path}: root must be <graph id=...> with a <version>, got <{root.tag}>")
    nodes: list[GraphNode] = []
    for element in root.findall("node"):
        node_id, operator = element.get("id"), (element.findtext("operator") or "").strip()
        if not node_id or not operator:
            raise ConfigError(f"SNAP graph {path}: every node needs an id and an <operator>")
        sources_element = element.find("sources")
        sources = tuple(child.get("refid") or (child.text or "").strip()
                        for child in (sources_element if sources_element is not None else []))
        nodes.append(GraphNode(node_id, operator, sources))
    ids = [node.node_id for node in nodes]
    if not nodes or len(set(ids)) != len(ids):
        raise ConfigError(f"SNAP graph {path}: needs nodes with unique ids, got {ids}")
    for node in nodes:
        unknown = [source for source in node.sources if source not in ids]
        if unknown:
            raise ConfigError(f"SNAP graph {path}: node {node.node_id} reads unknown nodes {unknown}")
    _check_acyclic(path, nodes)
    used: set[str] = set()
    for element in root.iter():  # comments are not elements: a ${name} in a comment is no parameter
        used.update(_PARAM.findall(element.text or ""))
        for value in element.attrib.values():
            used.update(_PARAM.findall(value))
    return SnapGraph(path=path, graph_id=str(root.get("id")), nodes=tuple(nodes), parameters=frozenset(used))


def _check_acyclic(path: Path, nodes: list[GraphNode]) -> None:
    sources = {node.node_id: node.sources for node in nodes}
    state: dict[str, int] = {}

    def visit(node_id: str, trail: tuple[str, ...]) -> None:
        if state.get(node_id) == 2:
            return
        if state.get(node_id) == 1:
            raise ConfigError(f"SNAP graph {path}: cycle through {' -> '.join((*trail, node_id))}")
        state[node_id] = 1
        for source in sources[node_id]:
            visit(source, (*trail, node_id))
        state[node_id] = 2

    for node in nodes:
        visit(node.node_id, ())


@dataclass(frozen=True, slots=True)
class GptSettings:
    """How ``gpt`` runs on this worker.

    Attributes:
        gpt_path: the executable (name on PATH or absolute path).
        memory: JVM maximum heap, e.g. ``8G`` (``-Xmx``); SNAP needs 8-16 GB per scene.
        tile_cache_mb: SNAP tile cache (``-c``), about 70 % of the heap.
        threads: parallelism (``-q``).
        timeout_s: the run is killed after this many seconds.
    """

    gpt_path: str = "gpt"
    memory: str = "8G"
    tile_cache_mb: int = 4096
    threads: int = 4
    timeout_s: float = 7200.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d+[MG]", self.memory) or self.tile_cache_mb < 1 or self.threads < 1 \
                or self.timeout_s <= 0:
            raise ConfigError(f"gpt settings: memory like 8G, tile_cache_mb, threads and timeout_s > 0; got {self}")


def gpt_command(settings: GptSettings, graph: SnapGraph, parameters: Mapping[str, str]) -> list[str]:
    """Return the argument list running *graph* with *parameters*.

    Raises:
        ConfigError: a ``${name}`` of the graph has no value, or a value is given the graph does not use.
    """
    missing = sorted(graph.parameters - set(parameters))
    unused = sorted(set(parameters) - graph.parameters)
    if missing or unused:
        raise ConfigError(f"SNAP graph {graph.path.name}: parameters missing {missing}, not in the graph {unused}")
    return [settings.gpt_path, str(graph.path), "-q", str(settings.threads), "-c", f"{settings.tile_cache_mb}M",
            *(f"-P{name}={parameters[name]}" for name in sorted(parameters))]


def _resolve(gpt_path: str) -> str:
    found = shutil.which(gpt_path)
    if found is None:
        raise SnapNotInstalledError(
            f"ESA SNAP gpt not found at {gpt_path!r}: run CARD jobs with the SNAP worker image "
            "(docker/snap-worker, see snap/README.md) or choose the sarsen backend"
        )
    return found


def run_gpt(settings: GptSettings, graph: SnapGraph, parameters: Mapping[str, str], *, product: str) -> float:
    """Run *graph* for *product*; stream gpt's output to the log; return the seconds it took.

    Raises:
        SnapNotInstalledError: no ``gpt`` at ``settings.gpt_path``.
        ConfigError: parameters do not match the graph.
        SnapError: gpt exited with an error or ran past ``timeout_s`` (the end of its output included).
    """
    command = gpt_command(settings, graph, parameters)
    command[0] = _resolve(settings.gpt_path)
    env = {**os.environ, "_JAVA_OPTIONS": f"-Xmx{settings.memory}"}
    started = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    log.info("gpt graph=%s product=%s threads=%d memory=%s", graph.path.name, product, settings.threads,
             settings.memory)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip())
            log.info("gpt| %s", line.rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=settings.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)  # gpt's launcher starts a JVM: end the whole group
        process.wait()
        reader.join(timeout=5)
        raise SnapError(f"gpt timed out after {settings.timeout_s:.0f} s on graph {graph.path.name}, "
                        f"product {product}; last output:\n" + "\n".join(tail)) from None
    reader.join(timeout=5)
    seconds = time.perf_counter() - started
    if code != 0:
        raise SnapError(f"gpt exited with {code} on graph {graph.path.name}, product {product} after "
                        f"{seconds:.0f} s; last output:\n" + "\n".join(tail))
    log.info("gpt done graph=%s product=%s seconds=%.1f", graph.path.name, product, seconds)
    return seconds
