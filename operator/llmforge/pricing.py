"""Price table and cost arithmetic: USD per GPU-hour, including the GPU VM's share of its host.

Rates are whole-machine list prices divided by the machine's GPUs, so one GPU-hour on a g2-standard-8
costs what the machine costs. The built-in table is dated and sourced; a cluster overrides it with the
ConfigMap named in settings (key ``prices.yaml``), in the same shape::

    date: "2026-11-26"
    source: "my negotiated rates"
    accelerators:
      nvidia-l4: {onDemand: 0.80, spot: 0.30}

Pure: no API calls. The controller reads the ConfigMap and passes its text to ``load_prices``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import yaml

from .api.accelerators import DEFAULT_RATES, PRICES_DATE, PRICES_SOURCE

#: Built-in table: the accelerator catalogue's prices (us-central1 list prices, USD/hour per GPU = machine
#: price / GPUs per machine; per pod-hour for cpu), dated and sourced there.
DEFAULT_DATE = PRICES_DATE
DEFAULT_SOURCE = PRICES_SOURCE
#: GKE's cluster management fee is per cluster, not per job: not charged to a job.
CLUSTER_FEE_PER_HOUR = 0.10


@dataclass(frozen=True)
class PriceTable:
    """Rates by accelerator, with the date and source shown in status.cost.pricingSource."""

    rates: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_RATES))
    date: str = DEFAULT_DATE
    source: str = DEFAULT_SOURCE

    def rate(self, accelerator: str, spot: bool) -> float:
        """USD per GPU-hour (per pod-hour for cpu). KeyError names the accelerator when unknown."""
        if accelerator not in self.rates:
            raise KeyError(f"no price for accelerator {accelerator!r}")
        on_demand, spot_rate = self.rates[accelerator]
        return spot_rate if spot else on_demand

    @property
    def label(self) -> str:
        return f"{self.source}, {self.date}"


DEFAULT_PRICES = PriceTable()


def load_prices(text: str | None, base: PriceTable = DEFAULT_PRICES) -> PriceTable:
    """Overlay a prices.yaml document on the built-in table. Raises ValueError with the bad key."""
    if not text:
        return base
    doc = yaml.safe_load(text) or {}
    if not isinstance(doc, dict):
        raise ValueError("prices.yaml: expected a mapping")
    rates = dict(base.rates)
    for name, entry in (doc.get("accelerators") or {}).items():
        if not isinstance(entry, dict):
            raise ValueError(f"prices.yaml: accelerators.{name}: expected a mapping with onDemand and spot")
        old = rates.get(name, (None, None))
        on_demand = entry.get("onDemand", old[0])
        spot = entry.get("spot", old[1] if old[1] is not None else on_demand)
        try:
            pair = (float(on_demand), float(spot))
        except (TypeError, ValueError):
            raise ValueError(f"prices.yaml: accelerators.{name}: onDemand and spot must be numbers") from None
        if min(pair) < 0:
            raise ValueError(f"prices.yaml: accelerators.{name}: prices must be >= 0")
        rates[name] = pair
    return PriceTable(rates, str(doc.get("date") or "undated"),
                      str(doc.get("source") or "ConfigMap prices.yaml"))


@dataclass(frozen=True)
class Interval:
    """One pod attempt's billed span, in seconds since the epoch."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


def gpu_hours(intervals: Iterable[Interval], gpus: int) -> float:
    """GPUs x hours summed over every attempt."""
    return sum(i.seconds for i in intervals) * gpus / 3600.0


def cost_usd(intervals: Iterable[Interval], gpus: int, rate_per_gpu_hour: float) -> float:
    """USD for these attempts: seconds x GPUs x rate / 3600, summed."""
    return gpu_hours(intervals, gpus) * rate_per_gpu_hour


def cheapest(accelerators: Iterable[str], counts: dict[str, int], prices: PriceTable, spot: bool) -> str | None:
    """The accelerator whose count x rate is lowest (ties: first given)."""
    best: tuple[float, str] | None = None
    for acc in accelerators:
        if acc not in prices.rates or acc not in counts:
            continue
        hourly = prices.rate(acc, spot) * counts[acc]
        if best is None or hourly < best[0]:
            best = (hourly, acc)
    return best[1] if best else None
