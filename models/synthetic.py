"""Seeded synthetic omnichannel events with their ground truth.

:func:`generate` invents customers of a few :data:`PERSONAS`, walks each one along a
planned journey of channels (for example ``instagram -> web`` or
``amazon -> ebay -> amazon``) in sessions, and returns the events exactly as producers
would put them on the ``events.<source>`` topics, plus the truth a test or a demo can
check the engine against: persona, journey, purchase channels and identify traits.
It can also mix in invalid messages of every kind the engine must dead-letter.

The generator is pure: the output depends only on the arguments (one
``random.Random(seed)``, no wall clock, no uuid4), and it imports only the standard
library (numpy, when installed, only sorts faster). It is written for volume
(``generate(100_000)``, 1.3 million events, takes seconds): per-event work is a few
draws from precomputed tables and one dict.
"""

from __future__ import annotations

import gc
import json
import random
from bisect import bisect
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache
from itertools import accumulate, combinations

try:  # only to sort a million event times faster; the result is the same without it
    import numpy as _np
except ImportError:  # pragma: no cover - numpy comes with river, a dependency
    _np = None

# The contract's input sources; a source's events go to topic ``events.<source>``.
SOURCES = ("clickstream", "email", "app", "social", "offline", "identify")

MARKETPLACES = ("amazon", "ebay", "etsy")
SOCIAL_PLATFORMS = ("facebook", "instagram", "pinterest", "tiktok", "x")

# The source whose topic carries a channel's events.
CHANNEL_SOURCE: dict[str, str] = {
    "web": "clickstream",
    **{m: "clickstream" for m in MARKETPLACES},
    "email": "email",
    "app": "app",
    **{p: "social" for p in SOCIAL_PLATFORMS},
    "store": "offline",
}

# How an invalid message is broken (InvalidEvent.kind); generate() cycles through them in this order.
INVALID_KINDS = (
    "truncated_json",
    "not_utf8",
    "empty",
    "wrong_type",
    "no_identifier",
    "unknown_type",
    "future_ts",
    "past_ts",
    "missing_revenue",
)

DEFAULT_START = datetime(2026, 11, 1, tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class Persona:
    """A kind of customer: ``name`` is the id used in the truth, ``label`` reads well in a report."""

    name: str
    label: str
    description: str


@dataclass(frozen=True, slots=True)
class CustomerTruth:
    """What was planned for one customer, to check the engine against.

    ``journey`` is the ordered path of channels walked (consecutive duplicates
    collapsed); the customer's non-identify events follow it exactly.
    ``purchase_channels`` lists the channels with a purchase, in order of the first one.
    ``traits`` are the identify traits sent for the customer.
    """

    customer_id: str
    anonymous_id: str
    email: str
    persona: str
    journey: tuple[str, ...]
    purchase_channels: tuple[str, ...]
    traits: dict


@dataclass(frozen=True, slots=True)
class GeneratedEvent:
    """A valid event: ``event`` is the JSON-ready envelope for topic ``events.<source>``."""

    source: str
    event: dict


@dataclass(frozen=True, slots=True)
class InvalidEvent:
    """A raw message value that breaks the contract in the way ``kind`` names."""

    source: str
    payload: bytes
    kind: str


@dataclass(frozen=True, slots=True)
class Dataset:
    """Customers' truth, valid events in event-time order and invalid messages."""

    customers: tuple[CustomerTruth, ...]
    events: tuple[GeneratedEvent, ...]
    invalid: tuple[InvalidEvent, ...]


@dataclass(frozen=True, slots=True)
class _Behaviour:
    """How one persona acts; probabilities are per session unless named otherwise."""

    persona: Persona
    weight: float
    journeys: tuple[tuple[tuple[str, ...], float], ...]
    sessions: dict[str, tuple[int, int]]  # sessions per journey stage, by channel
    age: tuple[int, int]
    devices: tuple[tuple[str, float], ...]
    categories: tuple[str, ...]
    interests: tuple[str, ...]
    income: tuple[float, ...]  # weights over _INCOME_BANDS
    buy: dict[str, float]  # purchase probability of a session, by channel
    cheapness: float = 1.0  # > 1 picks cheaper products of a category
    discount: float = 0.15  # share of purchases with a discount
    browse: tuple[int, int] = (1, 3)  # product views and searches per shop session
    search_share: float = 0.3
    abandon: float = 0.15  # add_to_cart without purchase
    email_open: float = 0.3
    email_click: float = 0.25  # given an open
    social_actions: tuple[int, int] = (1, 3)
    social_mix: tuple[tuple[str, float], ...] = (("like", 6), ("follow", 1), ("share", 1), ("comment", 1))
    ad_click: float = 0.3  # a social stage before a shop stage ends with an ad click
    push: float = 0.2  # an app session opened from a push notification
    screens: tuple[int, int] = (1, 3)
    event_attended: float = 0.05
    gap_scale: float = 1.0  # shorter gaps between sessions when < 1
    quantity: tuple[int, ...] = (1, 1, 1, 1, 2)


_INCOME_BANDS = ("low", "lower_middle", "middle", "upper_middle", "high")

_BEHAVIOURS: tuple[_Behaviour, ...] = (
    _Behaviour(
        Persona(
            "marketplace_bargain_hunter",
            "marketplace bargain hunters",
            "Compare prices for the same products across Amazon, eBay and Etsy on a desktop and buy on Amazon, "
            "mostly at a discount.",
        ),
        weight=0.17,
        journeys=(
            (("amazon", "ebay", "amazon"), 0.35),
            (("ebay", "amazon"), 0.2),
            (("amazon", "etsy", "amazon"), 0.15),
            (("web", "amazon"), 0.15),
            (("amazon",), 0.15),
        ),
        sessions={"amazon": (1, 2), "ebay": (1, 1), "etsy": (1, 1), "web": (1, 1)},
        age=(28, 55),
        devices=(("desktop", 0.75), ("mobile", 0.2), ("tablet", 0.05)),
        categories=("electronics", "home", "toys", "sports"),
        interests=("deals", "tech", "gaming", "diy"),
        income=(0.3, 0.35, 0.25, 0.08, 0.02),
        buy={"amazon": 0.45, "ebay": 0.08, "etsy": 0.04, "web": 0.03},
        cheapness=2.5,
        discount=0.8,
        browse=(1, 4),
        search_share=0.35,
        abandon=0.25,
    ),
    _Behaviour(
        Persona(
            "app_loyalist",
            "app loyalists",
            "Open the mobile app several times a week, react to push notifications and buy in the app.",
        ),
        weight=0.17,
        journeys=(
            (("app",), 0.5),
            (("email", "app"), 0.2),
            (("web", "app"), 0.2),
            (("instagram", "app"), 0.1),
        ),
        sessions={"app": (2, 4), "email": (1, 1), "web": (1, 1), "instagram": (1, 1)},
        age=(22, 45),
        devices=(("mobile", 0.9), ("tablet", 0.1)),
        categories=("groceries", "beauty", "fashion"),
        interests=("food", "beauty", "fashion", "fitness"),
        income=(0.1, 0.25, 0.4, 0.2, 0.05),
        buy={"app": 0.4, "web": 0.05},
        discount=0.2,
        email_open=0.4,
        push=0.45,
        screens=(1, 3),
        gap_scale=0.5,
        quantity=(1, 1, 2, 2, 3),
    ),
    _Behaviour(
        Persona(
            "social_discoverer",
            "social discoverers",
            "Discover products through Instagram, TikTok and Pinterest posts and ads on their phones, "
            "then buy on the web shop.",
        ),
        weight=0.17,
        journeys=(
            (("instagram", "web"), 0.35),
            (("tiktok", "web"), 0.25),
            (("tiktok", "instagram", "web"), 0.15),
            (("pinterest", "web"), 0.15),
            (("instagram", "web", "instagram"), 0.1),
        ),
        sessions={"instagram": (1, 2), "tiktok": (1, 2), "pinterest": (1, 1), "web": (1, 1)},
        age=(18, 29),
        devices=(("mobile", 0.85), ("tablet", 0.1), ("desktop", 0.05)),
        categories=("fashion", "beauty", "sports"),
        interests=("fashion", "beauty", "music", "travel", "fitness"),
        income=(0.35, 0.35, 0.2, 0.08, 0.02),
        buy={"web": 0.45},
        discount=0.1,
        browse=(1, 3),
        social_actions=(2, 3),
        social_mix=(("like", 5), ("share", 2), ("comment", 2), ("follow", 1), ("message", 1), ("mention", 1)),
        ad_click=0.8,
    ),
    _Behaviour(
        Persona(
            "email_responder",
            "email responders",
            "Read newsletters and promotions on a desktop, click through and buy on the web shop or in the app.",
        ),
        weight=0.17,
        journeys=(
            (("email", "web"), 0.5),
            (("email", "web", "email", "web"), 0.2),
            (("email", "app"), 0.15),
            (("web", "email", "web"), 0.15),
        ),
        sessions={"email": (1, 2), "web": (1, 1), "app": (1, 1)},
        age=(45, 75),
        devices=(("desktop", 0.7), ("tablet", 0.2), ("mobile", 0.1)),
        categories=("home", "garden", "books", "electronics"),
        interests=("gardening", "books", "travel", "cooking"),
        income=(0.05, 0.15, 0.35, 0.3, 0.15),
        buy={"web": 0.45, "app": 0.35},
        cheapness=0.7,
        discount=0.25,
        browse=(1, 3),
        email_open=0.85,
        email_click=0.7,
        gap_scale=1.2,
    ),
    _Behaviour(
        Persona(
            "store_regular",
            "store regulars",
            "Visit their local stores often, pay at the till and attend in-store events, with little online "
            "activity.",
        ),
        weight=0.14,
        journeys=(
            (("store",), 0.5),
            (("email", "store"), 0.2),
            (("facebook", "store"), 0.15),
            (("web", "store"), 0.15),
        ),
        sessions={"store": (3, 5), "email": (1, 1), "facebook": (1, 1), "web": (1, 1)},
        age=(35, 70),
        devices=(("mobile", 0.6), ("other", 0.25), ("desktop", 0.15)),
        categories=("groceries", "home", "fashion", "garden"),
        interests=("food", "cooking", "family", "gardening"),
        income=(0.15, 0.3, 0.35, 0.15, 0.05),
        buy={"store": 0.6, "web": 0.02},
        discount=0.1,
        browse=(1, 2),
        event_attended=0.25,
        quantity=(1, 1, 2, 3),
    ),
    _Behaviour(
        Persona(
            "web_window_shopper",
            "web window shoppers",
            "Browse and search the web shop at length on a tablet, collect ideas on Pinterest and rarely buy.",
        ),
        weight=0.18,
        journeys=(
            (("web",), 0.45),
            (("web", "pinterest", "web"), 0.2),
            (("facebook", "web"), 0.15),
            (("web", "email", "web"), 0.2),
        ),
        sessions={"web": (1, 2), "pinterest": (1, 1), "facebook": (1, 1), "email": (1, 1)},
        age=(25, 60),
        devices=(("tablet", 0.6), ("desktop", 0.25), ("mobile", 0.15)),
        categories=("furniture", "fashion", "electronics", "home"),
        interests=("interior", "fashion", "tech", "travel"),
        income=(0.1, 0.25, 0.35, 0.2, 0.1),
        buy={"web": 0.04},
        cheapness=0.8,
        browse=(4, 7),
        search_share=0.4,
        abandon=0.35,
        ad_click=0.1,
    ),
)

PERSONAS: tuple[Persona, ...] = tuple(b.persona for b in _BEHAVIOURS)

# Product categories: (id prefix, lowest and highest base price in EUR, search terms).
_CATEGORIES = {
    "electronics": ("el", 20.0, 900.0, ("wireless headphones", "usb-c charger", "4k monitor", "smart watch")),
    "home": ("ho", 8.0, 200.0, ("coffee grinder", "bed linen", "led lamp", "storage box")),
    "fashion": ("fa", 12.0, 180.0, ("white sneakers", "denim jacket", "wool scarf", "summer dress")),
    "beauty": ("be", 4.0, 80.0, ("vitamin c serum", "lip balm", "hair oil", "sunscreen spf 50")),
    "sports": ("sp", 10.0, 250.0, ("yoga mat", "running shoes", "dumbbells", "cycling gloves")),
    "toys": ("to", 6.0, 120.0, ("building blocks", "board game", "puzzle 1000", "rc car")),
    "books": ("bo", 6.0, 45.0, ("crime novel", "cookbook", "travel guide", "garden book")),
    "garden": ("ga", 5.0, 300.0, ("garden hose", "seed kit", "pruning shears", "raised bed")),
    "groceries": ("gr", 1.5, 40.0, ("oat milk", "organic coffee", "olive oil", "dark chocolate")),
    "furniture": ("fu", 40.0, 1500.0, ("sofa", "oak table", "bookshelf", "office chair")),
}
_PRODUCTS_PER_CATEGORY = 120
_SEARCH_TERMS = {cat: spec[3] for cat, spec in _CATEGORIES.items()}

# Price differences between channels, so that price checks across channels find something.
_PRICE_FACTOR = {"web": 1.0, "amazon": 0.96, "ebay": 0.9, "etsy": 1.08, "app": 1.0, "store": 1.03}

_PRODUCT_URL = {
    "web": "https://shop.omniprofile.example/p/",
    "amazon": "https://www.amazon.com/dp/",
    "ebay": "https://www.ebay.com/itm/",
    "etsy": "https://www.etsy.com/listing/",
}
_LANDING_URL = {
    "web": "https://shop.omniprofile.example/",
    "amazon": "https://www.amazon.com/stores/omniprofile",
    "ebay": "https://www.ebay.com/str/omniprofile",
    "etsy": "https://www.etsy.com/shop/omniprofile",
}
_POST_URL = {
    "facebook": "https://www.facebook.com/omniprofile/posts/",
    "instagram": "https://www.instagram.com/p/",
    "pinterest": "https://www.pinterest.com/pin/",
    "tiktok": "https://www.tiktok.com/@omniprofile/video/",
    "x": "https://x.com/omniprofile/status/",
}
_TEXTS = ("love this!", "where can I buy it?", "is this available in blue?", "great quality", "what size is that?")
_SCREENS = ("home", "search", "product", "cart", "offers", "account")
_APP_VERSIONS = ("5.2.0", "5.3.1", "5.4.0")
_REGIONS = {
    "DE": ("Bavaria", "Berlin", "Hamburg"),
    "FR": ("Ile-de-France", "Provence"),
    "NL": ("North Holland", "Utrecht"),
    "ES": ("Madrid", "Catalonia"),
    "IT": ("Lombardy", "Lazio"),
}
_FIRST_NAMES = ("anna", "ben", "clara", "david", "emma", "felix", "greta", "hugo", "ines", "jonas", "lea", "marco",
                "nina", "oscar", "paula", "rafael", "sofia", "tom", "vera", "yusuf")
_LAST_NAMES = ("schmidt", "martin", "de.vries", "garcia", "rossi", "muller", "bernard", "jansen", "lopez", "bianchi")
_MAIL_DOMAINS = ("mail", "post", "inbox", "webmail")
_CAMPAIGN_TYPES = (("newsletter", 0.5), ("promotion", 0.35), ("transactional", 0.15))

_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_EPOCH_MS_SHARE = 0.2  # events whose ts is epoch milliseconds rather than ISO-8601 text
_ALIAS_SHARE = 0.05
_YEAR_MS = 365 * _DAY_MS
_Y2K_MS = 946_684_800_000  # 2000-01-01T00:00:00Z


def _cum(pairs):
    """(values, cumulative weights), drawn from with :meth:`_Simulator.pick`."""
    pairs = tuple(pairs)
    return tuple(v for v, _ in pairs), tuple(accumulate(w for _, w in pairs))


@cache
def _clock_texts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """'HH:MM:' for every minute of a day and 'SS.mmmZ' for every millisecond of a minute."""
    minutes = tuple(f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60))
    millis = tuple(f"{s:02d}.{ms:03d}Z" for s in range(60) for ms in range(1000))
    return minutes, millis


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _epoch_ms_ceil(moment: datetime) -> int:
    return -(-(moment - _EPOCH) // timedelta(milliseconds=1))


def _iso_ms(ms: int) -> str:
    """ISO-8601 UTC text with milliseconds and a Z, as producers send it."""
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class _Context:
    """Per-customer state the session writers share (mutable, private to one customer)."""

    __slots__ = ("customer_id", "anonymous_id", "email", "interests", "region", "behaviour", "focus",
                 "os", "app_version", "installed", "hook")

    def __init__(self, customer_id, anonymous_id, email, interests, region, behaviour, focus, os, app_version):
        self.customer_id = customer_id
        self.anonymous_id = anonymous_id
        self.email = email
        self.interests = interests
        self.region = region
        self.behaviour = behaviour
        self.focus = focus  # products the customer keeps coming back to (price checks across channels)
        self.os = os
        self.app_version = app_version
        self.installed = False
        self.hook = None  # what led out of the last session: the clicked ad's post or email's campaign


class _Simulator:
    """Walks customers through their journeys, appending each customer's events in time order.

    Event dicts are built with ``event_id`` and ``ts`` placeholders (None), so that the key
    order is final; ``emit`` fills them in. A product is a tuple
    ``(category, product_id, {channel: price}, {shop channel: product page url}, {channel: cents})``;
    money is counted in integer cents, so that amounts need no rounding.
    """

    def __init__(self, rng: random.Random, start_ms: int, window_ms: int, anonymous_share: float):
        self.rng = rng
        self.random = rnd = rng.random
        self.start_ms = start_ms
        self.window_ms = window_ms
        self.anonymous_share = anonymous_share
        self.times: list[int] = []  # event time in ms after the start, by generation order
        self.generated: list[GeneratedEvent] = []  # by generation order
        self.emit = self._emitter(start_ms)
        self.orders = 0
        self.behaviours = _cum((b, b.weight) for b in _BEHAVIOURS)
        self.journeys = {b.persona.name: _cum(b.journeys) for b in _BEHAVIOURS}
        self.devices = {b.persona.name: _cum(b.devices) for b in _BEHAVIOURS}
        self.social_mix = {b.persona.name: _cum(b.social_mix) for b in _BEHAVIOURS}
        self.incomes = {b.persona.name: _cum(zip(_INCOME_BANDS, b.income)) for b in _BEHAVIOURS}
        self.interest_sets = {  # every set of 1 to 3 interests, grouped by size
            b.persona.name: tuple(tuple(combinations(b.interests, k)) for k in (1, 2, 3)) for b in _BEHAVIOURS
        }
        self.campaign_types = _cum(_CAMPAIGN_TYPES)
        self.campaigns = tuple(f"cmp-{n:03d}" for n in range(1, 41))
        self.catalog = {}  # category -> products from cheapest to dearest
        for cat, (prefix, lo, hi, _) in _CATEGORIES.items():
            bases = sorted(lo * (hi / lo) ** rnd() for _ in range(_PRODUCTS_PER_CATEGORY))
            self.catalog[cat] = tuple(
                (cat, pid, {ch: round(base * f * 100) / 100 for ch, f in _PRICE_FACTOR.items()},
                 {ch: url + pid for ch, url in _PRODUCT_URL.items()},
                 {ch: round(base * f * 100) for ch, f in _PRICE_FACTOR.items()})
                for pid, base in ((f"{prefix}-{j:04d}", base) for j, base in enumerate(bases, 1))
            )
        self.posts = {p: tuple(f"{int(rnd() * 1e12):012d}" for _ in range(500)) for p in SOCIAL_PLATFORMS}
        self.stores = {  # two stores per region
            region: (f"st-{country.lower()}-{2 * i + 1:02d}", f"st-{country.lower()}-{2 * i + 2:02d}")
            for country, regions in _REGIONS.items()
            for i, region in enumerate(regions)
        }
        self.countries = tuple(_REGIONS)

    # -- small draws -------------------------------------------------------------------

    def pick(self, table):
        values, cum = table
        return values[bisect(cum, self.random() * cum[-1])]

    def any_product(self, b: _Behaviour) -> tuple:
        """A product of the persona's categories, cheap ones more often for a high ``cheapness``."""
        rnd = self.random
        items = self.catalog[b.categories[int(rnd() * len(b.categories))]]
        return items[int(rnd() ** b.cheapness * len(items))]

    def product(self, ctx: _Context) -> tuple:
        """Half the time one of the customer's focus products, else any product they might like."""
        if self.random() < 0.5:
            return ctx.focus[int(self.random() * len(ctx.focus))]
        return self.any_product(ctx.behaviour)

    def order(self, b: _Behaviour, product: tuple, channel: str, qty: int = 0) -> dict:
        """Purchase properties; a discount of 5 to 35 % for a ``b.discount`` share of orders."""
        rnd = self.random
        qty = qty or b.quantity[int(rnd() * len(b.quantity))]
        gross = product[4][channel] * qty
        discount = int(gross * (0.05 + 0.3 * rnd())) if rnd() < b.discount else 0
        self.orders += 1
        return {"order_id": f"o-{self.orders:08d}", "revenue": (gross - discount) / 100, "currency": "EUR",
                "quantity": qty, "category": product[0], "product_id": product[1], "discount": discount / 100}

    def _emitter(self, start_ms: int):
        """``emit(source, t, event)``: fill in the event's id and timestamp and keep it.

        A closure, so that everything it needs per event is a local name: with a million
        events, this is the cost that matters.
        """
        rnd, randbytes = self.random, self.rng.randbytes
        last = self.window_ms - 1
        times_append, generated_append = self.times.append, self.generated.append
        # ISO text = minute_texts[minute] + millis[ms within the minute]: tables, not formatting.
        clock, millis = _clock_texts()
        first_minute = start_ms // 60_000
        days = range(first_minute // 1440, (start_ms + last) // _DAY_MS + 1)
        day_texts = [(_EPOCH + timedelta(days=d)).strftime("%Y-%m-%dT") for d in days]
        minute_texts = [day_texts[m // 1440 - days.start] + clock[m % 1440]
                        for m in range(first_minute, (start_ms + last) // 60_000 + 1)]

        def event_ids():
            while True:  # 32 hex digits each, drawn 4096 at a time
                blob = randbytes(16 * 4096).hex()
                for pos in range(0, len(blob), 32):
                    yield blob[pos:pos + 32]

        next_id = event_ids().__next__
        # GeneratedEvent(source, event) without the frozen __init__ (object.__setattr__ per
        # field): the same object, made the way copy and pickle make it, in half the time.
        new_object = object.__new__
        set_source, set_event = GeneratedEvent.source.__set__, GeneratedEvent.event.__set__

        def emit(source: str, t: int, event: dict) -> None:
            if t > last:  # only a very short window squeezes this far
                t = last
            times_append(t)
            event["event_id"] = next_id()
            ms = start_ms + t
            if rnd() < _EPOCH_MS_SHARE:
                event["ts"] = ms
            else:
                minute, milli = divmod(ms, 60_000)
                event["ts"] = minute_texts[minute - first_minute] + millis[milli]
            generated = new_object(GeneratedEvent)
            set_source(generated, source)
            set_event(generated, event)
            generated_append(generated)

        return emit

    # -- one customer ------------------------------------------------------------------

    def customer(self, index: int) -> CustomerTruth:
        """Invent customer ``index``, emit their identify and journey events, return the truth."""
        rnd = self.random
        b = self.pick(self.behaviours)
        name = b.persona.name
        customer_id = f"c-{index + 1:06d}"
        anonymous_id = f"anon-{self.rng.getrandbits(64):016x}"
        email = (f"{_FIRST_NAMES[int(rnd() * len(_FIRST_NAMES))]}.{_LAST_NAMES[int(rnd() * len(_LAST_NAMES))]}"
                 f"{index + 1}@{_MAIL_DOMAINS[int(rnd() * len(_MAIL_DOMAINS))]}.example")
        traits = self.traits(b)
        journey = self.pick(self.journeys[name])
        devices = self.devices[name]
        device = self.pick(devices)
        ctx = _Context(customer_id, anonymous_id, email, traits["interests"], traits["region"], b,
                       (self.any_product(b), self.any_product(b)), "ios" if rnd() < 0.5 else "android",
                       _APP_VERSIONS[int(rnd() * len(_APP_VERSIONS))])

        # Plan: each journey stage gets one or more sessions, hours or days apart.
        plan = []
        for stage, ch in enumerate(journey):
            lo, hi = b.sessions[ch]
            plan.extend([(stage, ch)] * (lo + int(rnd() * (hi - lo + 1))))
        scale = b.gap_scale
        gaps = [int(scale * (5_400_000 + rnd() * 36_000_000 if rnd() < 0.55 else _DAY_MS + rnd() * 4 * _DAY_MS))
                for _ in range(len(plan) - 1)]
        lead = 1_000 + int(rnd() * 600_000)  # sign-up (identify) shortly before the first session
        room = self.window_ms - 1
        total = sum(gaps)
        need = 2_000 + lead + total + _HOUR_MS  # a session lasts well under an hour
        night = 12 * _HOUR_MS * (len(plan) + 1)  # room to move each start out of the night
        daytime = need + night < room
        if daytime:
            need += night
        elif need > room:  # a short window: squeeze the gaps (sessions still never overlap)
            squeeze = max(0.0, (room - 2_000 - lead - _HOUR_MS) / max(1, total))
            gaps = [int(g * squeeze) for g in gaps]
            need = 2_000 + lead + sum(gaps) + _HOUR_MS
        t = int(rnd() * (room - need)) if need < room else 0
        if daytime:
            t = self.morning(t)

        self.emit("identify", t, {"event_id": None, "type": "identify", "ts": None, "customer_id": customer_id,
                                  "email": email, "channel": "web", "device": device,
                                  "properties": {"traits": dict(traits, interests=list(traits["interests"]))}})
        if rnd() < _ALIAS_SHARE:
            self.emit("identify", t + 1_000, {"event_id": None, "type": "alias", "ts": None,
                                              "customer_id": customer_id, "channel": "web",
                                              "properties": {"previous_id": anonymous_id}})
        start = t + 2_000 + lead
        purchases: list[str] = []
        came_from = None  # (channel, hook) of the stage just left, for the landing page of the next
        last = len(plan) - 1
        for k, (stage, ch) in enumerate(plan):
            last_of_stage = k == last or plan[k + 1][0] != stage
            if daytime:
                start = self.morning(start)
            session_device = device if rnd() < 0.8 else self.pick(devices)
            ctx.hook = None
            source = CHANNEL_SOURCE[ch]
            if source == "clickstream":
                end, bought = self.shop_session(ctx, ch, start, session_device, came_from)
            elif source == "app":
                end, bought = self.app_session(ctx, start, k == last)
            elif source == "email":
                end, bought = self.email_session(ctx, start, session_device)
            elif source == "social":
                hop = journey[stage + 1] if last_of_stage and k != last else None
                end, bought = self.social_session(ctx, ch, start, session_device, hop)
            else:
                end, bought = self.store_session(ctx, start)
            if bought and ch not in purchases:
                purchases.append(ch)
            came_from = (ch, ctx.hook) if last_of_stage else None
            if k != last:
                start = max(start + gaps[k], end + 1_000)
        return CustomerTruth(customer_id, anonymous_id, email, name, journey, tuple(purchases), traits)

    def morning(self, t: int) -> int:
        """``t``, or a morning time (7 a.m. to noon UTC) when ``t`` falls in the night (at most 12 h later)."""
        hour = (self.start_ms + t) // _HOUR_MS % 24
        if hour >= 7:
            return t
        return t + (7 - hour) * _HOUR_MS + int(self.random() * 5 * _HOUR_MS)

    def traits(self, b: _Behaviour) -> dict:
        rnd = self.random
        lo, hi = b.age
        age = lo + int(rnd() * (hi - lo + 1))
        country = self.countries[int(rnd() * len(self.countries))]
        regions = _REGIONS[country]
        x = rnd()
        if age < 25:
            employment = "student" if x < 0.6 else "employed"
        elif age >= 66:
            employment = "retired" if x < 0.85 else "self_employed"
        else:
            employment = "employed" if x < 0.75 else "self_employed" if x < 0.88 else "unemployed"
        x = rnd()
        if age < 27:
            marital = "single" if x < 0.8 else "partnered"
        else:
            marital = ("married" if x < 0.5 else "single" if x < 0.7 else "partnered" if x < 0.85
                       else "divorced" if x < 0.95 or age < 60 else "widowed")
        x = rnd()
        gender = "female" if x < 0.48 else "male" if x < 0.95 else "non_binary" if x < 0.97 else "undisclosed"
        sets = self.interest_sets[b.persona.name][int(rnd() * 3)]
        return {
            "age": age,
            "gender": gender,
            "region": regions[int(rnd() * len(regions))],
            "country": country,
            "income_band": self.pick(self.incomes[b.persona.name]),
            "marital_status": marital,
            "employment_status": employment,
            "interests": list(sets[int(rnd() * len(sets))]),
        }

    # -- sessions: each emits its events from ``start`` on, returns (end, purchased) -----

    def shop_session(self, ctx: _Context, ch: str, start: int, device: str, came_from):
        """Web shop or marketplace: landing page, views and searches, maybe cart and purchase."""
        rnd = self.random
        emit = self.emit
        b = ctx.behaviour
        share = self.anonymous_share
        cid, aid = ctx.customer_id, ctx.anonymous_id
        landing = {"url": _LANDING_URL[ch]}
        hook = came_from[1] if came_from is not None and ch == "web" else None
        if hook is not None and came_from[0] == "email":
            landing.update(utm_source="newsletter", utm_medium="email", utm_campaign=hook)
        elif hook is not None:
            platform = came_from[0]
            landing.update(referrer=_POST_URL[platform] + hook, utm_source=platform, utm_medium="social",
                           utm_campaign=f"{platform}-{ctx.interests[0]}")
        elif ch == "web" and rnd() < 0.3:
            landing["referrer"] = "https://www.google.com/"
        t = start
        if rnd() < share:  # pre-login browsing: only the cookie id
            emit("clickstream", t, {"event_id": None, "type": "page_view", "ts": None, "anonymous_id": aid,
                                    "channel": ch, "device": device, "properties": landing})
        else:
            emit("clickstream", t, {"event_id": None, "type": "page_view", "ts": None, "customer_id": cid,
                                    "channel": ch, "device": device, "properties": landing})
        catalog, focus = self.catalog, ctx.focus
        categories, search_share, cheapness = b.categories, b.search_share, b.cheapness
        seen = None
        lo, hi = b.browse
        for _ in range(lo + int(rnd() * (hi - lo + 1))):
            t += 3_000 + int(rnd() * 90_000)
            x = rnd()
            if x < search_share:
                terms = _SEARCH_TERMS[categories[int(rnd() * len(categories))]]
                kind, props = "search", {"search_query": terms[int(rnd() * len(terms))]}
            else:
                if x < 0.5 + 0.5 * search_share:  # as self.product(ctx), inlined: the hottest loop
                    seen = focus[0] if rnd() < 0.5 else focus[1]
                else:
                    items = catalog[categories[int(rnd() * len(categories))]]
                    seen = items[int(rnd() ** cheapness * len(items))]
                kind, props = "product_view", {"product_id": seen[1], "category": seen[0], "price": seen[2][ch],
                                               "url": seen[3][ch]}
            if rnd() < share:
                emit("clickstream", t, {"event_id": None, "type": kind, "ts": None, "anonymous_id": aid,
                                        "channel": ch, "device": device, "properties": props})
            else:
                emit("clickstream", t, {"event_id": None, "type": kind, "ts": None, "customer_id": cid,
                                        "channel": ch, "device": device, "properties": props})
        buy = rnd() < b.buy.get(ch, 0.0)
        if not buy and rnd() >= b.abandon:
            return t, False
        if seen is None:
            seen = self.product(ctx)
        qty = b.quantity[int(rnd() * len(b.quantity))]
        cart = {"product_id": seen[1], "category": seen[0], "price": seen[2][ch], "quantity": qty}
        t += 5_000 + int(rnd() * 60_000)
        emit("clickstream", t, {"event_id": None, "type": "add_to_cart", "ts": None, "customer_id": cid,
                                "channel": ch, "device": device, "properties": cart})
        if not buy:
            return t, False
        t += 10_000 + int(rnd() * 60_000)
        emit("clickstream", t, {"event_id": None, "type": "checkout", "ts": None, "customer_id": cid,
                                "channel": ch, "device": device, "properties": dict(cart)})
        t += 20_000 + int(rnd() * 100_000)
        emit("clickstream", t, {"event_id": None, "type": "purchase", "ts": None, "customer_id": cid,
                                "channel": ch, "device": device, "properties": self.order(b, seen, ch, qty)})
        return t, True

    def email_session(self, ctx: _Context, start: int, device: str):
        """One campaign: sent, then maybe open and click (rarely a bounce or an unsubscribe)."""
        rnd = self.random
        emit = self.emit
        b = ctx.behaviour
        cid, email = ctx.customer_id, ctx.email
        campaign = self.campaigns[int(rnd() * len(self.campaigns))]
        campaign_type = self.pick(self.campaign_types)
        t = start
        emit("email", t, {"event_id": None, "type": "sent", "ts": None, "customer_id": cid, "email": email,
                          "channel": "email",
                          "properties": {"campaign_id": campaign, "campaign_type": campaign_type}})
        if rnd() < 0.01:
            t += 2_000 + int(rnd() * 20_000)
            emit("email", t, {"event_id": None, "type": "bounce", "ts": None, "customer_id": cid, "email": email,
                              "channel": "email",
                              "properties": {"campaign_id": campaign, "campaign_type": campaign_type}})
            return t, False
        if rnd() >= b.email_open:
            return t, False
        t += 60_000 + int(rnd() * 40 * 60_000)
        emit("email", t, {"event_id": None, "type": "open", "ts": None, "customer_id": cid, "email": email,
                          "channel": "email", "device": device,
                          "properties": {"campaign_id": campaign, "campaign_type": campaign_type}})
        if rnd() < b.email_click:
            t += 5_000 + int(rnd() * 120_000)
            emit("email", t, {"event_id": None, "type": "click", "ts": None, "customer_id": cid, "email": email,
                              "channel": "email", "device": device,
                              "properties": {"campaign_id": campaign, "campaign_type": campaign_type,
                                             "url": _LANDING_URL["web"]}})
            ctx.hook = campaign
        elif rnd() < 0.02:
            t += 5_000 + int(rnd() * 60_000)
            emit("email", t, {"event_id": None, "type": "unsubscribe", "ts": None, "customer_id": cid,
                              "email": email, "channel": "email", "device": device,
                              "properties": {"campaign_id": campaign, "campaign_type": campaign_type}})
        return t, False

    def app_session(self, ctx: _Context, start: int, last: bool):
        """Install (the first time), an app or push open, a few screens, maybe a purchase."""
        rnd = self.random
        emit = self.emit
        b = ctx.behaviour
        cid = ctx.customer_id
        version, os = ctx.app_version, ctx.os
        t = start
        if not ctx.installed:
            ctx.installed = True
            emit("app", t, {"event_id": None, "type": "install", "ts": None, "customer_id": cid,
                            "channel": "app", "device": "mobile", "properties": {"app_version": version, "os": os}})
            t += 20_000 + int(rnd() * 60_000)
        emit("app", t, {"event_id": None, "type": "push_open" if rnd() < b.push else "app_open", "ts": None,
                        "customer_id": cid, "channel": "app", "device": "mobile",
                        "properties": {"app_version": version, "os": os}})
        lo, hi = b.screens
        for _ in range(lo + int(rnd() * (hi - lo + 1))):
            t += 3_000 + int(rnd() * 60_000)
            emit("app", t, {"event_id": None, "type": "screen_view", "ts": None, "customer_id": cid,
                            "channel": "app", "device": "mobile",
                            "properties": {"screen": _SCREENS[int(rnd() * len(_SCREENS))],
                                           "app_version": version, "os": os}})
        bought = rnd() < b.buy.get("app", 0.0)
        if bought:
            t += 10_000 + int(rnd() * 90_000)
            product = self.product(ctx)
            props = self.order(b, product, "app")
            props["app_version"], props["os"] = version, os
            emit("app", t, {"event_id": None, "type": "purchase", "ts": None, "customer_id": cid,
                            "channel": "app", "device": "mobile", "properties": props})
        if last and rnd() < 0.03:
            t += 60_000 + int(rnd() * 600_000)
            emit("app", t, {"event_id": None, "type": "uninstall", "ts": None, "customer_id": cid,
                            "channel": "app", "device": "mobile", "properties": {"app_version": version, "os": os}})
        return t, bought

    def social_session(self, ctx: _Context, ch: str, start: int, device: str, hop: str | None):
        """A few interactions with posts; before a hop to a shop or the app, often ends with an ad click."""
        rnd = self.random
        emit = self.emit
        b = ctx.behaviour
        cid = ctx.customer_id
        mix_values, mix_cum = self.social_mix[b.persona.name]
        mix_total = mix_cum[-1]
        posts = self.posts[ch]
        interests = ctx.interests
        lo, hi = b.social_actions
        n = lo + int(rnd() * (hi - lo + 1))
        click = hop is not None and CHANNEL_SOURCE[hop] != "social" and rnd() < b.ad_click
        t = start
        for i in range(n):
            if i:
                t += 10_000 + int(rnd() * 150_000)
            kind = "ad_click" if click and i == n - 1 else mix_values[bisect(mix_cum, rnd() * mix_total)]
            post = posts[int(rnd() * len(posts))]
            props = {"post_id": post, "topic": interests[int(rnd() * len(interests))]}
            if kind == "comment" or kind == "message" or kind == "mention":
                props["text"] = _TEXTS[int(rnd() * len(_TEXTS))]
            emit("social", t, {"event_id": None, "type": kind, "ts": None, "customer_id": cid,
                               "channel": ch, "device": device, "properties": props})
        if click:
            ctx.hook = post
        return t, False

    def store_session(self, ctx: _Context, start: int):
        """A store visit, sometimes an in-store event, often a purchase at the till."""
        rnd = self.random
        emit = self.emit
        b = ctx.behaviour
        cid = ctx.customer_id
        region = ctx.region
        store_id = self.stores[region][0 if rnd() < 0.8 else 1]
        t = start
        emit("offline", t, {"event_id": None, "type": "store_visit", "ts": None, "customer_id": cid,
                            "channel": "store", "properties": {"store_id": store_id, "region": region}})
        if rnd() < b.event_attended:
            t += 60_000 + int(rnd() * 900_000)
            emit("offline", t, {"event_id": None, "type": "event_attended", "ts": None, "customer_id": cid,
                                "channel": "store", "properties": {"store_id": store_id, "region": region}})
        bought = rnd() < b.buy.get("store", 0.0)
        if bought:
            t += 120_000 + int(rnd() * 1_200_000)
            product = self.product(ctx)
            props = self.order(b, product, "store")
            props["store_id"], props["region"] = store_id, region
            emit("offline", t, {"event_id": None, "type": "pos_purchase", "ts": None, "customer_id": cid,
                                "channel": "store", "properties": props})
        return t, bought


def generate(
    customers: int,
    *,
    seed: int = 7,
    start: datetime | None = None,
    days: int = 28,
    invalid_rate: float = 0.0,
    anonymous_share: float = 0.1,
) -> Dataset:
    """Synthetic events of ``customers`` customers over ``days`` days, with ground truth.

    Each customer gets a persona, one ``identify`` event (and, for about 5 %, an ``alias``
    from their cookie id), then sessions along a journey of channels typical of the
    persona. Same arguments, same dataset: nothing depends on the clock or global state.

    Parameters
    ----------
    customers
        Number of customers, with ids ``c-000001`` upwards.
    seed
        Seed of the one random generator everything is drawn from.
    start
        Aware start of the time window; defaults to 2026-11-01T00:00:00Z. Every event
        time lies in ``[start, start + days)``.
    days
        Length of the window in days (at least 1).
    invalid_rate
        Invalid messages to add, as a fraction of the valid events (rounded), cycling
        through :data:`INVALID_KINDS`. Adding them leaves the valid events unchanged.
    anonymous_share
        Share of clickstream browsing events (page_view, product_view, search) that
        carry only the customer's ``anonymous_id``.

    Returns
    -------
    Dataset
        The customers' truth, the valid events sorted by event time, the invalid messages.

    Examples
    --------
    >>> data = generate(200, seed=1, invalid_rate=0.05)
    >>> len(data.customers), data.customers[0].customer_id
    (200, 'c-000001')
    >>> 10 <= len(data.events) / len(data.customers) <= 15
    True
    >>> first = data.events[0]
    >>> first.source in SOURCES and {"event_id", "type", "ts", "channel", "properties"} <= first.event.keys()
    True
    >>> sorted({bad.kind for bad in data.invalid}) == sorted(INVALID_KINDS)
    True
    >>> generate(200, seed=1, invalid_rate=0.05) == data
    True
    """
    if isinstance(customers, bool) or not isinstance(customers, int) or customers < 0:
        raise ValueError(f"customers must be a non-negative int, got {customers!r}")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be an int >= 1, got {days!r}")
    if not 0.0 <= anonymous_share <= 1.0:
        raise ValueError(f"anonymous_share must be within [0, 1], got {anonymous_share!r}")
    if not invalid_rate >= 0.0:
        raise ValueError(f"invalid_rate must be >= 0, got {invalid_rate!r}")
    start = DEFAULT_START if start is None else start
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be an aware datetime, e.g. datetime(2026, 11, 1, tzinfo=timezone.utc)")

    start_ms = _epoch_ms_ceil(start)
    window_ms = days * _DAY_MS
    rng = random.Random(seed)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small dicts: the cyclic collector would rescan them for nothing
    try:
        sim = _Simulator(rng, start_ms, window_ms, anonymous_share)
        truths = tuple(sim.customer(i) for i in range(customers))
        events = tuple(map(sim.generated.__getitem__, _time_order(sim.times)))
        # Its own generator: the valid events are the same whatever the invalid rate.
        invalid = _invalid_events(random.Random(f"omniprofile-invalid-{seed}"), events, truths,
                                  round(invalid_rate * len(events)), start_ms, window_ms)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Dataset(truths, events, invalid)


def _time_order(times: list[int]) -> list[int]:
    """Indexes that sort ``times``; ties keep generation order, so each customer's own order."""
    if _np is not None and len(times) > 1_000:
        return _np.argsort(_np.fromiter(times, dtype=_np.int64, count=len(times)), kind="stable").tolist()
    return sorted(range(len(times)), key=times.__getitem__)


_UNKNOWN_TYPES = ("teleport", "page_veiw", "purchased", "levitate")
_LATIN1_TEXT = "caf\xe9 cr\xe8me"  # encoded as latin-1 below: not UTF-8


def _invalid_events(rng, events, truths, count, start_ms, window_ms) -> tuple[InvalidEvent, ...]:
    """``count`` invalid messages, each a mangled copy of a valid event (fresh event id)."""
    if not events or count <= 0:
        return ()
    out = []
    for i in range(count):
        kind = INVALID_KINDS[i % len(INVALID_KINDS)]
        template = events[int(rng.random() * len(events))]
        if kind == "missing_revenue":  # a purchase: one event in 20 or so, a few draws find one
            for _ in range(1_000):
                if template.event["type"] in ("purchase", "pos_purchase"):
                    break
                template = events[int(rng.random() * len(events))]
            else:  # a tiny dataset without purchases: make one up
                template = GeneratedEvent("clickstream", {
                    "event_id": "", "type": "purchase", "ts": _iso_ms(start_ms),
                    "customer_id": truths[0].customer_id, "channel": "web", "device": "desktop",
                    "properties": {"order_id": "o-0", "revenue": 1.0, "currency": "EUR", "quantity": 1}})
        event = json.loads(json.dumps(template.event))
        event["event_id"] = f"{rng.getrandbits(128):032x}"
        payload = None
        if kind == "truncated_json":
            data = json.dumps(event).encode()
            payload = data[: 1 + int(rng.random() * (len(data) - 1))]
        elif kind == "not_utf8":
            event["properties"]["text"] = _LATIN1_TEXT
            payload = json.dumps(event, ensure_ascii=False).encode("latin-1")
        elif kind == "empty":
            payload = b""
        elif kind == "wrong_type":
            variant = int(rng.random() * 4)
            if variant == 0:
                event["properties"] = ["not", "an", "object"]
            elif variant == 1:
                event["ts"] = {"seconds": (start_ms + window_ms // 2) // 1000}
            elif variant == 2:
                event["customer_id"] = 1000 + int(rng.random() * 1000)
            else:
                payload = b"42"  # a JSON value, but not an event object
        elif kind == "no_identifier":
            for key in ("customer_id", "anonymous_id", "email"):
                event.pop(key, None)
        elif kind == "unknown_type":
            event["type"] = _UNKNOWN_TYPES[int(rng.random() * len(_UNKNOWN_TYPES))]
        elif kind in ("future_ts", "past_ts"):
            # Far outside any plausible clock: 10 to 100 years after the window, or up to 20 years
            # before 2000 (and before the window); large enough to read as milliseconds, not seconds.
            if kind == "future_ts":
                ms = start_ms + window_ms + 10 * _YEAR_MS + int(rng.random() * 90 * _YEAR_MS)
            else:
                ms = min(start_ms, _Y2K_MS) - 1 - int(rng.random() * 20 * _YEAR_MS)
            event["ts"] = ms if rng.random() < _EPOCH_MS_SHARE else _iso_ms(ms)
        else:  # missing_revenue
            del event["properties"]["revenue"]
        if payload is None:
            payload = json.dumps(event).encode()
        out.append(InvalidEvent(template.source, payload, kind))
    return tuple(out)
