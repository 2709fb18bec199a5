"""A road-like network around a city: rings and radials, fastest routes, map projection.

The network is a ring-radial graph in a local plane (metres, x east, y north) laid over
the land side of the city: radial avenues from the centre, ring roads crossing them,
faster roads further out and traffic lights in the dense centre. Ring edges follow
their arc, so headings, yaw rates and lateral accelerations come out as on real roads.
All-pairs fastest routes are precomputed (the graph has a few dozen nodes), so starting
a trip is a table lookup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

EARTH_M_PER_DEG = 111_320.0
POINTS_PER_EDGE = 9


@dataclass(frozen=True, slots=True)
class City:
    """Where the fleet drives: centre, local time offset and the shape of the network."""

    name: str
    lat: float
    lon: float
    utc_offset_s: int
    sector_deg: tuple[float, float]  # bearings of the land sector, clockwise from first to second
    ring_radii_km: tuple[float, ...]
    ring_limits_kmh: tuple[float, ...]
    n_radials: int
    coast_bearing_deg: float  # bearing from the centre pointing inland (altitude rises)


CITIES: dict[str, City] = {
    # Rabat: the Atlantic lies to the north-west, so the network fans out east and south.
    "rabat": City("Rabat", 34.02, -6.83, 3600, (30.0, 230.0),
                  (1.0, 2.2, 4.0, 6.5, 9.5, 13.5), (40, 50, 60, 60, 80, 100), 11, 130.0),
}


def _wrap_deg(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return (a + 180.0) % 360.0 - 180.0


class RoadNetwork:
    """The graph, its edge geometry and the all-pairs fastest routes."""

    def __init__(self, city: City, seed: int) -> None:
        rng = np.random.default_rng([seed, 0xC17])
        self.city = city
        b0, b1 = city.sector_deg
        span = (b1 - b0) % 360.0
        bearings = np.radians(b0 + span * np.arange(city.n_radials) / (city.n_radials - 1))
        n_rings = len(city.ring_radii_km)
        radii = np.asarray(city.ring_radii_km) * 1000.0

        # nodes: 0 = centre, then ring-major (ring i, radial j) -> 1 + i * n_radials + j
        xy = [(0.0, 0.0)]
        ring_of = [-1]
        for i in range(n_rings):
            spacing = radii[i] * span / 360.0 * 2 * math.pi / (city.n_radials - 1)
            jitter = min(spacing, radii[i]) * 0.06
            for j in range(city.n_radials):
                dx, dy = rng.normal(0.0, jitter, 2)
                xy.append((radii[i] * math.sin(bearings[j]) + dx, radii[i] * math.cos(bearings[j]) + dy))
                ring_of.append(i)
        self.node_xy = np.asarray(xy, dtype=np.float64)
        self.node_ring = np.asarray(ring_of, dtype=np.int32)
        n_nodes = len(xy)

        def node(i: int, j: int) -> int:
            return 1 + i * city.n_radials + j

        pts: list[npt.NDArray[np.float64]] = []
        limits: list[float] = []
        frm: list[int] = []
        to: list[int] = []
        t = np.linspace(0.0, 1.0, POINTS_PER_EDGE)

        def add(a: int, b: int, line: npt.NDArray[np.float64], limit: float) -> None:
            for src, dst, geom in ((a, b, line), (b, a, line[::-1])):
                frm.append(src)
                to.append(dst)
                pts.append(geom)
                limits.append(limit)

        for j in range(city.n_radials):  # radial avenues
            prev = 0
            for i in range(n_rings):
                cur = node(i, j)
                p, q = self.node_xy[prev], self.node_xy[cur]
                line = p[None, :] + (q - p)[None, :] * t[:, None]
                add(prev, cur, line, 50.0 if i <= 2 else (70.0 if i <= 4 else 90.0))
                prev = cur
        for i in range(n_rings):  # ring roads, following the arc
            for j in range(city.n_radials - 1):
                a, b = node(i, j), node(i, j + 1)
                ang = bearings[j] + (bearings[j + 1] - bearings[j]) * t
                arc = np.stack([radii[i] * np.sin(ang), radii[i] * np.cos(ang)], axis=1)
                # bend the ideal arc so it meets the jittered end nodes exactly
                err_a = self.node_xy[a] - arc[0]
                err_b = self.node_xy[b] - arc[-1]
                arc = arc + err_a[None, :] * (1 - t)[:, None] + err_b[None, :] * t[:, None]
                add(a, b, arc, float(city.ring_limits_kmh[i]))

        self.edge_pts = np.stack(pts)  # (E, P, 2)
        self.edge_from = np.asarray(frm, dtype=np.int32)
        self.edge_to = np.asarray(to, dtype=np.int32)
        self.edge_limit_kmh = np.asarray(limits, dtype=np.float64)
        seg = np.diff(self.edge_pts, axis=1)
        seg_len = np.hypot(seg[..., 0], seg[..., 1])
        self.edge_cum = np.concatenate([np.zeros((len(frm), 1)), np.cumsum(seg_len, axis=1)], axis=1)
        self.edge_len = self.edge_cum[:, -1].copy()
        self.edge_seg_heading = np.degrees(np.arctan2(seg[..., 0], seg[..., 1])) % 360.0  # (E, P-1)
        self.edge_urban = self.node_ring[self.edge_to] <= 3
        self.edge_vmax = self.edge_limit_kmh / 3.6
        out_heading = self.edge_seg_heading[:, -1]
        in_heading = self.edge_seg_heading[:, 0]
        self.turn_deg = np.abs(_wrap_deg(in_heading[None, :] - out_heading[:, None]))  # [from edge, into edge]
        n_edges = len(frm)
        self.edge_of = np.full((n_nodes, n_nodes), -1, dtype=np.int32)
        self.edge_of[self.edge_from, self.edge_to] = np.arange(n_edges, dtype=np.int32)

        # junctions: traffic lights in the centre and inner rings, roundabouts further out
        self.node_stop_prob = np.where(self.node_ring <= 3, 0.45, 0.15)
        self.node_stop_prob[0] = 0.5
        self.node_dwell_s = np.where(self.node_ring <= 3, 35.0, 6.0)

        # turn speed when leaving edge e into edge f (for anticipation at junctions)
        self.n_nodes = n_nodes
        self._routes(n_nodes)

    def _routes(self, n_nodes: int) -> None:
        """All-pairs fastest paths (Floyd-Warshall on free-flow travel time)."""
        cost = np.full((n_nodes, n_nodes), np.inf)
        np.fill_diagonal(cost, 0.0)
        travel = self.edge_len / (self.edge_limit_kmh / 3.6) + 8.0  # + junction penalty
        cost[self.edge_from, self.edge_to] = travel
        nxt = np.where(np.isfinite(cost), np.arange(n_nodes)[None, :], -1)
        for k in range(n_nodes):
            alt = cost[:, k, None] + cost[None, k, :]
            better = alt < cost
            cost = np.where(better, alt, cost)
            nxt = np.where(better, nxt[:, k, None], nxt)
        self.route_cost_s = cost
        paths: dict[tuple[int, int], list[int]] = {}
        longest = 1
        for a in range(n_nodes):
            for b in range(n_nodes):
                if a == b:
                    continue
                edges: list[int] = []
                cur = a
                while cur != b:
                    step = int(nxt[cur, b])
                    edges.append(int(self.edge_of[cur, step]))
                    cur = step
                paths[(a, b)] = edges
                longest = max(longest, len(edges))
        self.max_route_edges = longest
        self.route_edges = np.zeros((n_nodes, n_nodes, longest), dtype=np.int32)
        self.route_len = np.zeros((n_nodes, n_nodes), dtype=np.int32)
        for (a, b), edges in paths.items():
            self.route_edges[a, b, :len(edges)] = edges
            self.route_len[a, b] = len(edges)

    # --- geometry ------------------------------------------------------------------------

    def position(self, edge: npt.NDArray[np.int32], along: npt.NDArray[np.float64]
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(x, y, heading_deg) at distance `along` metres on each edge.

        Edge points are (nearly) evenly spaced, so the piece is found by proportion.
        """
        pieces = POINTS_PER_EDGE - 1
        u = np.minimum(np.maximum(along / self.edge_len[edge], 0.0), 1.0) * pieces
        piece = np.minimum(u.astype(np.intp), pieces - 1)
        frac = (u - piece)[:, None]
        p = self.edge_pts[edge, piece]
        xy = p + (self.edge_pts[edge, piece + 1] - p) * frac
        return xy[:, 0], xy[:, 1], self.edge_seg_heading[edge, piece]

    def turn_angle(self, edge: npt.NDArray[np.int32], next_edge: npt.NDArray[np.int32]
                   ) -> npt.NDArray[np.float64]:
        """Absolute heading change in degrees from the end of `edge` into `next_edge`."""
        out = self.edge_seg_heading[edge, -1]
        into = self.edge_seg_heading[next_edge, 0]
        return np.abs(_wrap_deg(into - out))

    def to_latlon(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]
                  ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """WGS 84 latitude/longitude of local plane coordinates (equirectangular)."""
        lat = self.city.lat + y / EARTH_M_PER_DEG
        lon = self.city.lon + x / (EARTH_M_PER_DEG * math.cos(math.radians(self.city.lat)))
        return lat, lon

    def altitude(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Terrain height in metres: rising inland from the coast, with gentle hills."""
        b = math.radians(self.city.coast_bearing_deg)
        inland = x * math.sin(b) + y * math.cos(b)
        return 12.0 + np.maximum(inland + 1500.0, 0.0) * 0.011 + 9.0 * np.sin(x / 1700.0) * np.cos(y / 2300.0)

    def nodes_on_rings(self, lo: int, hi: int) -> npt.NDArray[np.int32]:
        """Node ids whose ring index is in [lo, hi] (ring -1 is the centre)."""
        return np.flatnonzero((self.node_ring >= lo) & (self.node_ring <= hi)).astype(np.int32)
