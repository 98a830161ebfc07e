"""The network a preflight measured (RUN_DIR/preflight.json, schema 1) and the planner figures it
gives: `llmlaunch plan --network-from RUN_DIR/preflight.json`.

`llmlaunch preflight` (launcher/preflight.py) times an all-reduce over two kinds of link: the ranks
of one host together (`intra_host`, every host at once) and one rank per host (`inter_host`, the
lowest rank of each host; absent with one host). Per link kind it records

- bus_gb_per_s: nccl-tests' bus bandwidth of the large all-reduce, busbw = algbw * 2 (n - 1) / n
  with algbw = bytes / time (nccl-tests, doc/PERFORMANCE.md, "AllReduce"): what each rank's link
  carries, comparable across group sizes; allreduce_bus_gb_per_s below.
- latency_us: the time of the small all-reduce (a few KiB; see launcher/device_probe.py for why not 4
  bytes), the slowest rank's median.

The planner prices a ring all-reduce as 2 (n - 1) alpha + 2 (n - 1)/n N / B
(topology/step_time.allreduce_time_s, Hockney's alpha-beta model); the small all-reduce's time is
its alpha part, so alpha = latency / (2 (n - 1)) (hockney_alpha_us), and B is the measured bus
bandwidth. Approximate: the large all-reduce's time also holds its 2 (n - 1) alpha, which the model
then counts twice (a few percent when the large message takes 10x the small one or more).

This module is pure (no torch): the document's builder and its reader share the schema here.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

SCHEMA = 1
LINK_KINDS = ("intra_host", "inter_host")


def allreduce_bus_gb_per_s(nbytes: float, group_size: int, time_s: float) -> float:
    """nccl-tests' all-reduce bus bandwidth in GB/s: (nbytes / time_s) * 2 (n - 1) / n."""
    if group_size < 2 or not time_s > 0:
        raise ValueError(f"an all-reduce bandwidth needs 2 or more ranks and a positive time, got "
                         f"{group_size} ranks and {time_s} s")
    return nbytes / time_s * 2 * (group_size - 1) / group_size / 1e9


def hockney_alpha_us(latency_us: float, group_size: int) -> float:
    """alpha of one message from a small all-reduce's time: t = 2 (n - 1) alpha (the latency term of
    topology/step_time.allreduce_time_s)."""
    if group_size < 2:
        raise ValueError(f"an all-reduce latency needs 2 or more ranks, got {group_size}")
    return latency_us / (2 * (group_size - 1))


def host_groups(hostnames: list[str]) -> tuple[dict[str, list[int]], list[int]]:
    """({host: its ranks}, one rank per host): hosts in the order of their first rank; each host's
    lowest rank stands for it between hosts."""
    per_host: dict[str, list[int]] = {}
    for rank, host in enumerate(hostnames):
        per_host.setdefault(host, []).append(rank)
    return per_host, [ranks[0] for ranks in per_host.values()]


def link_figures(*, group_size: int, small_bytes: int, large_bytes: int, repeats: int,
                 small_s: float, large_s: float) -> dict:
    """One group's record: the sizes and repetitions timed, the latency and the bus bandwidth."""
    return {"group_size": group_size, "small_bytes": small_bytes, "large_bytes": large_bytes,
            "repeats": repeats, "latency_us": small_s * 1e6,
            "bus_gb_per_s": allreduce_bus_gb_per_s(large_bytes, group_size, large_s)}


def combine_hosts(per_host: dict[str, dict]) -> dict:
    """The intra-host figures of all hosts as one link: the lowest bandwidth and the highest latency
    (a synchronous step waits for its slowest host), the smallest group (the largest alpha), and
    every host's own record under per_host."""
    records = list(per_host.values())
    first = records[0]
    return {"group_size": min(r["group_size"] for r in records),
            "small_bytes": first["small_bytes"], "large_bytes": first["large_bytes"],
            "repeats": first["repeats"],
            "latency_us": max(r["latency_us"] for r in records),
            "bus_gb_per_s": min(r["bus_gb_per_s"] for r in records),
            "per_host": per_host}


def preflight_document(*, hostnames: list[str], backend: str, device: str, date: str,
                       intra: dict[str, dict], inter: dict | None, checks_passed: bool) -> dict:
    """preflight.json: `intra` {host: link_figures} of every host with two or more ranks, `inter`
    the one-rank-per-host group's link_figures (None with one host)."""
    per_host, leaders = host_groups(hostnames)
    links, absent = {}, {}
    if intra:
        links["intra_host"] = combine_hosts(intra)
    else:
        absent["intra_host"] = "one rank per host: no link inside a host to time"
    if inter is not None:
        links["inter_host"] = {**inter, "ranks": leaders}
    else:
        absent["inter_host"] = ("one host: no link between hosts to time" if len(per_host) == 1
                                else "not measured")
    return {"schema": SCHEMA, "date": date, "backend": backend, "device": device,
            "world_size": len(hostnames), "hosts": list(per_host),
            "ranks_per_host": per_host, "links": links, "absent": absent,
            "checks_passed": checks_passed}


@dataclass(frozen=True)
class LinkFigures:
    bus_gb_per_s: float
    latency_us: float
    """The small all-reduce's time."""
    group_size: int

    @property
    def alpha_us(self) -> float:
        return hockney_alpha_us(self.latency_us, self.group_size)


@dataclass(frozen=True)
class MeasuredNetwork:
    """What plan --network-from takes from a preflight.json."""

    source: str
    date: str
    backend: str
    hosts: int
    intra: LinkFigures | None
    inter: LinkFigures | None

    def gpu_overrides(self, unmeasured_latency_us: float) -> dict:
        """topology.hardware.gpu keyword overrides: the measured bandwidths and alphas. With one
        link measured the other keeps its bandwidth and `unmeasured_latency_us` (the catalog's or
        the flag's collective_latency_us)."""
        out = {}
        if self.intra is not None:
            out["intra_node_gb_per_s"] = self.intra.bus_gb_per_s
            out["collective_latency_us"] = self.intra.alpha_us
        if self.inter is None:
            out["inter_node_latency_us"] = unmeasured_latency_us
        else:
            out["inter_node_gb_per_s"] = self.inter.bus_gb_per_s
            out["inter_node_latency_us"] = self.inter.alpha_us
        return out

    def note(self) -> str:
        """Where the plan's network figures came from, for the report."""
        parts = []
        for label, link in (("intra-node", self.intra), ("inter-node", self.inter)):
            if link is None:
                parts.append(f"{label} from the catalog (not measured)")
            else:
                parts.append(f"{label} {link.bus_gb_per_s:.3g} GB/s bus, alpha "
                             f"{link.alpha_us:.3g} us ({link.latency_us:.3g} us all-reduce of "
                             f"{link.group_size})")
        return (f"network measured by preflight ({self.source}, {self.date}, {self.backend}, "
                f"{self.hosts} host(s)): " + "; ".join(parts))


def _link(doc_links: dict, kind: str, label: str) -> LinkFigures | None:
    entry = doc_links.get(kind)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ValueError(f"{label}: links.{kind} must be an object")
    values = {}
    for key in ("bus_gb_per_s", "latency_us"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value > 0):
            raise ValueError(f"{label}: links.{kind}.{key} must be a positive number, got {value!r}")
        values[key] = float(value)
    size = entry.get("group_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"{label}: links.{kind}.group_size must be an integer >= 2, got {size!r}")
    return LinkFigures(values["bus_gb_per_s"], values["latency_us"], size)


def network_from_document(doc: object, label: str) -> MeasuredNetwork:
    """Validate a parsed preflight.json; bad content raises ValueError naming `label` and the key."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{label} is not a preflight.json of schema {SCHEMA} (schema: {found!r}); "
                         "write one with `llmlaunch preflight` or the job's preflight")
    links = doc.get("links")
    if not isinstance(links, dict):
        raise ValueError(f"{label}: 'links' must be an object with intra_host and/or inter_host")
    intra, inter = _link(links, "intra_host", label), _link(links, "inter_host", label)
    if intra is None and inter is None:
        raise ValueError(f"{label} measured no link (neither intra_host nor inter_host): run the "
                         "preflight with two or more ranks")
    hosts = doc.get("hosts")
    return MeasuredNetwork(source=label, date=str(doc.get("date", "?")),
                           backend=str(doc.get("backend", "?")),
                           hosts=len(hosts) if isinstance(hosts, list) else 0,
                           intra=intra, inter=inter)


def read_network(path: str | Path) -> MeasuredNetwork:
    """plan --network-from PATH: the measured network, or ValueError in one line."""
    label = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"--network-from {label}: cannot read it ({exc.strerror or exc}); give the "
                         "preflight.json a preflight wrote into its run directory") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--network-from {label}: not JSON ({exc.msg}, line {exc.lineno})") from None
    return network_from_document(doc, f"--network-from {label}")
