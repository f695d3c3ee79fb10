"""Where each agency sits, and how far (in round-trip time) it is from the gateway.

The gateway stands in Lyon, where Interpol's General Secretariat is. Each
agency sits in a national capital. No published table gives the round-trip
time from one city to 100+ capitals, so the times come from a model fitted to
a published measurement:

- **Measurement.** WonderProxy, "Miles per Millisecond: A Look at the
  WonderProxy Network" (Paul Reinheimer, 2011,
  https://wonderproxy.com/blog/miles-per-milisecond/) publishes the ping
  times between ten cities; the row from Paris (400 km from Lyon) is in
  :data:`PARIS_PINGS`.
- **Model.** Round-trip time grows linearly with the great-circle distance:
  ``rtt = a + b * distance``, fitted by least squares to that row
  (:func:`fitted_model`): about 17 ms of fixed cost plus 0.018 ms per km.
  Light in fibre covers 200 km per ms (2/3 c), so a straight fibre would take
  0.010 ms per km of round trip: the fit's slope is a route inflation of about
  1.8, in line with the ~2x over fibre (3x over c) that "Towards a speed of
  light Internet" (Singla et al., 2014, arXiv:1505.03449) measured.
- **Clip.** Times are held within 10-300 ms: the antipodes of Lyon (New
  Zealand, the Pacific) would otherwise reach 360 ms.
- **Jitter.** 2% of the round-trip time, about the mean ratio of standard
  deviation to mean in the sample of WonderNetwork's hourly pings published in
  "A day in the life of the Internet" (WonderProxy, 2020,
  https://wonderproxy.com/blog/a-day-in-the-life-of-the-internet/).
- **Loss.** Drawn uniformly in 0-3% per agency, as the issue asks; not a
  measurement.

Capital coordinates are rounded to 0.01 degree; at 0.018 ms per km that is
far below a millisecond.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from liaison.errors import ConfigError

EARTH_RADIUS_KM = 6371.0088
GATEWAY_SITE = ("Lyon", 45.76, 4.84)
MIN_RTT_MS = 10.0
MAX_RTT_MS = 300.0
JITTER_SHARE = 0.02
MAX_LOSS = 0.03

# WonderProxy 2011, ping (ms) from Paris, with each city's coordinates.
PARIS = (48.86, 2.35)
PARIS_PINGS: tuple[tuple[str, float, float, float], ...] = (
    ("Baltimore", 39.29, -76.61, 97.75),
    ("Brisbane", -27.47, 153.03, 337.47),
    ("Dallas", 32.78, -96.80, 131.79),
    ("Fremont", 37.55, -121.99, 175.19),
    ("Milan", 45.46, 9.19, 21.29),
    ("Moscow", 55.76, 37.62, 56.13),
    ("New York", 40.71, -74.01, 77.31),
    ("Sydney", -33.87, 151.21, 348.84),
    ("Zurich", 47.38, 8.54, 108.06),
)


@dataclass(frozen=True, slots=True)
class Capital:
    city: str
    country: str  # ISO 3166-1 alpha-2
    lat: float
    lon: float


# fmt: off
CAPITALS: tuple[Capital, ...] = tuple(Capital(*c) for c in (
    # Europe
    ("Paris", "FR", 48.86, 2.35), ("Bern", "CH", 46.95, 7.45), ("Rome", "IT", 41.90, 12.50),
    ("Madrid", "ES", 40.42, -3.70), ("Lisbon", "PT", 38.72, -9.14),
    ("Brussels", "BE", 50.85, 4.35), ("Amsterdam", "NL", 52.37, 4.90),
    ("Luxembourg", "LU", 49.61, 6.13), ("Berlin", "DE", 52.52, 13.40),
    ("Vienna", "AT", 48.21, 16.37), ("Prague", "CZ", 50.08, 14.44),
    ("Bratislava", "SK", 48.15, 17.11), ("Budapest", "HU", 47.50, 19.04),
    ("Warsaw", "PL", 52.23, 21.01), ("Ljubljana", "SI", 46.06, 14.51),
    ("Zagreb", "HR", 45.81, 15.98), ("Belgrade", "RS", 44.79, 20.45),
    ("Sarajevo", "BA", 43.86, 18.41), ("Podgorica", "ME", 42.44, 19.26),
    ("Tirana", "AL", 41.33, 19.82), ("Skopje", "MK", 42.00, 21.43),
    ("Sofia", "BG", 42.70, 23.32), ("Bucharest", "RO", 44.43, 26.10),
    ("Chisinau", "MD", 47.01, 28.86), ("Kyiv", "UA", 50.45, 30.52),
    ("Vilnius", "LT", 54.69, 25.28), ("Riga", "LV", 56.95, 24.11),
    ("Tallinn", "EE", 59.44, 24.75), ("Helsinki", "FI", 60.17, 24.94),
    ("Stockholm", "SE", 59.33, 18.07), ("Oslo", "NO", 59.91, 10.75),
    ("Copenhagen", "DK", 55.68, 12.57), ("Reykjavik", "IS", 64.15, -21.94),
    ("Dublin", "IE", 53.35, -6.26), ("London", "GB", 51.51, -0.13),
    ("Athens", "GR", 37.98, 23.73), ("Valletta", "MT", 35.90, 14.51),
    ("Nicosia", "CY", 35.17, 33.36), ("Ankara", "TR", 39.93, 32.86),
    ("Tbilisi", "GE", 41.72, 44.79), ("Yerevan", "AM", 40.18, 44.51),
    ("Baku", "AZ", 40.41, 49.87), ("Andorra la Vella", "AD", 42.51, 1.52),
    ("Monaco", "MC", 43.74, 7.42), ("San Marino", "SM", 43.94, 12.45),
    ("Vaduz", "LI", 47.14, 9.52),
    # Middle East and Asia
    ("Beirut", "LB", 33.89, 35.50), ("Amman", "JO", 31.95, 35.93),
    ("Riyadh", "SA", 24.71, 46.68), ("Abu Dhabi", "AE", 24.45, 54.38),
    ("Doha", "QA", 25.29, 51.53), ("Manama", "BH", 26.23, 50.59),
    ("Kuwait City", "KW", 29.38, 47.99), ("Muscat", "OM", 23.59, 58.41),
    ("Baghdad", "IQ", 33.31, 44.37), ("Tashkent", "UZ", 41.30, 69.24),
    ("Astana", "KZ", 51.17, 71.43), ("Bishkek", "KG", 42.87, 74.59),
    ("Islamabad", "PK", 33.68, 73.05), ("New Delhi", "IN", 28.61, 77.21),
    ("Kathmandu", "NP", 27.72, 85.32), ("Dhaka", "BD", 23.81, 90.41),
    ("Colombo", "LK", 6.93, 79.86), ("Bangkok", "TH", 13.76, 100.50),
    ("Hanoi", "VN", 21.03, 105.85), ("Kuala Lumpur", "MY", 3.14, 101.69),
    ("Singapore", "SG", 1.35, 103.82), ("Jakarta", "ID", -6.21, 106.85),
    ("Manila", "PH", 14.60, 120.98), ("Beijing", "CN", 39.90, 116.41),
    ("Seoul", "KR", 37.57, 126.98), ("Tokyo", "JP", 35.68, 139.69),
    ("Ulaanbaatar", "MN", 47.89, 106.91), ("Phnom Penh", "KH", 11.56, 104.92),
    ("Vientiane", "LA", 17.97, 102.63),
    # Africa
    ("Rabat", "MA", 34.02, -6.83), ("Algiers", "DZ", 36.75, 3.06), ("Tunis", "TN", 36.81, 10.18),
    ("Cairo", "EG", 30.04, 31.24), ("Dakar", "SN", 14.72, -17.47), ("Abuja", "NG", 9.08, 7.40),
    ("Accra", "GH", 5.60, -0.19), ("Yamoussoukro", "CI", 6.83, -5.29),
    ("Nairobi", "KE", -1.29, 36.82), ("Addis Ababa", "ET", 9.03, 38.74),
    ("Kampala", "UG", 0.35, 32.58), ("Kigali", "RW", -1.95, 30.06),
    ("Dodoma", "TZ", -6.16, 35.75), ("Pretoria", "ZA", -25.75, 28.19),
    ("Windhoek", "NA", -22.56, 17.08), ("Gaborone", "BW", -24.63, 25.92),
    ("Lusaka", "ZM", -15.39, 28.32), ("Harare", "ZW", -17.83, 31.05),
    ("Maputo", "MZ", -25.97, 32.57), ("Luanda", "AO", -8.84, 13.23),
    ("Kinshasa", "CD", -4.44, 15.27), ("Yaounde", "CM", 3.85, 11.50),
    ("Antananarivo", "MG", -18.88, 47.51), ("Port Louis", "MU", -20.16, 57.50),
    ("Bamako", "ML", 12.64, -8.00), ("Niamey", "NE", 13.51, 2.11),
    ("Khartoum", "SD", 15.50, 32.56),
    # The Americas
    ("Ottawa", "CA", 45.42, -75.70), ("Washington", "US", 38.91, -77.04),
    ("Mexico City", "MX", 19.43, -99.13), ("Guatemala City", "GT", 14.63, -90.51),
    ("Tegucigalpa", "HN", 14.07, -87.19), ("San Salvador", "SV", 13.69, -89.22),
    ("Managua", "NI", 12.11, -86.24), ("San Jose", "CR", 9.93, -84.08),
    ("Panama City", "PA", 8.98, -79.52), ("Havana", "CU", 23.11, -82.37),
    ("Kingston", "JM", 18.02, -76.80), ("Santo Domingo", "DO", 18.49, -69.93),
    ("Nassau", "BS", 25.05, -77.35), ("Port of Spain", "TT", 10.65, -61.52),
    ("Bogota", "CO", 4.71, -74.07), ("Caracas", "VE", 10.48, -66.90),
    ("Quito", "EC", -0.18, -78.47), ("Lima", "PE", -12.05, -77.04),
    ("La Paz", "BO", -16.50, -68.15), ("Brasilia", "BR", -15.79, -47.88),
    ("Asuncion", "PY", -25.26, -57.58), ("Montevideo", "UY", -34.90, -56.16),
    ("Buenos Aires", "AR", -34.60, -58.38), ("Santiago", "CL", -33.45, -70.67),
    # Oceania
    ("Canberra", "AU", -35.28, 149.13), ("Wellington", "NZ", -41.29, 174.78),
    ("Suva", "FJ", -18.14, 178.44), ("Port Moresby", "PG", -9.44, 147.18),
))
# fmt: on


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a spherical Earth of mean radius."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def fitted_model() -> tuple[float, float]:
    """(fixed ms, ms per km) of round-trip time, least squares over :data:`PARIS_PINGS`."""
    xs = [great_circle_km(*PARIS, lat, lon) for _, lat, lon, _ in PARIS_PINGS]
    ys = [rtt for *_, rtt in PARIS_PINGS]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return my - slope * mx, slope


_FIXED_MS, _MS_PER_KM = fitted_model()


def rtt_from_gateway_ms(capital: Capital) -> float:
    _, lat, lon = GATEWAY_SITE
    km = great_circle_km(lat, lon, capital.lat, capital.lon)
    return min(MAX_RTT_MS, max(MIN_RTT_MS, _FIXED_MS + _MS_PER_KM * km))


@dataclass(frozen=True, slots=True)
class Site:
    """An agency of the test bed: who it is, where, and its path to the gateway."""

    node_id: str
    name: str
    capital: Capital
    rtt_ms: float
    jitter_ms: float
    loss: float


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def plan(
    nodes: int, seed: int = 1, *, rtt_scale: float = 1.0, max_loss: float = MAX_LOSS
) -> tuple[Site, ...]:
    """``nodes`` agencies in distinct capitals drawn with ``seed``; the same seed, the same plan.

    ``rtt_scale`` shrinks (or stretches) every round trip, for tests that
    cannot wait for the far side of the world; ``max_loss`` bounds the loss.
    """
    if not 1 <= nodes <= len(CAPITALS):
        raise ConfigError(f"the test bed has {len(CAPITALS)} capitals; ask for 1..{len(CAPITALS)}")
    if rtt_scale <= 0 or not 0 <= max_loss < 1:
        raise ConfigError("rtt_scale must be positive and max_loss a probability below 1")
    rng = random.Random(seed)
    sites = []
    for capital in rng.sample(CAPITALS, nodes):
        rtt = round(rtt_from_gateway_ms(capital) * rtt_scale, 1)
        sites.append(
            Site(
                node_id=f"{capital.country.lower()}-{_slug(capital.city)}",
                name=f"{capital.city} police (synthetic)",
                capital=capital,
                rtt_ms=rtt,
                jitter_ms=round(rtt * JITTER_SHARE, 2),
                loss=round(rng.uniform(0.0, max_loss), 4),
            )
        )
    return tuple(sites)
