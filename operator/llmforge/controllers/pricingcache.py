"""The cluster's price table for every controller: the pricing ConfigMap over the built-in table, cached.

FineTuneJob, Evaluation and ModelDeployment all bill GPU time at the same rates, so they share one cached
read of the ConfigMap (at most one API call a minute, whatever the number of objects) rather than one each.
The arithmetic is in ``llmforge.pricing``; this module only does the I/O and the caching.
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes.client.rest import ApiException

from .. import kube
from ..pricing import DEFAULT_PRICES, PriceTable, load_prices
from ..settings import Settings

PRICES_TTL_SECONDS = 60.0

_prices: tuple[float, PriceTable] | None = None


def prices_fresh() -> bool:
    """Whether `prices` would answer from its cache, without I/O (callers on the event loop check first)."""
    return _prices is not None and time.monotonic() - _prices[0] < PRICES_TTL_SECONDS


def prices(settings: Settings, logger: Any = None) -> PriceTable:
    """The ConfigMap's prices.yaml over the built-in table, cached for a minute; defaults on any error."""
    global _prices
    now = time.monotonic()
    if _prices and now - _prices[0] < PRICES_TTL_SECONDS:
        return _prices[1]
    table = DEFAULT_PRICES
    try:
        cm = kube.get("v1", "ConfigMap", settings.operator_namespace, settings.pricing_configmap)
        if cm:
            table = load_prices((cm.get("data") or {}).get("prices.yaml"))
    except (ApiException, ValueError, OSError) as exc:
        if logger:
            logger.warning(f"pricing ConfigMap ignored, using built-in prices: {exc}")
    _prices = (now, table)
    return table
