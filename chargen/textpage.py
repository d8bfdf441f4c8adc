"""A static page of text with every character coloured by a number: what `chargen score` and `chargen inspect` share.

A colour scale is a tuple of stops `(value, (r, g, b))`, linear between them and clamped at the ends. Each
character is one `<span>` with its background and a tooltip, HTML-escaped, so the page gives the text back
exactly; a newline stays a newline and the CSS draws a ↵ before it. One self-contained file, no script.
"""

from __future__ import annotations

import html

DARK = 0.45  # backgrounds with a relative luminance below this get white text


def colour_at(value: float, stops) -> tuple[int, int, int]:
    """The colour of `value` on the scale `stops`: linear between them, the first or last beyond them."""
    for (low, low_rgb), (high, high_rgb) in zip(stops, stops[1:]):
        if value <= high:
            share = max(0.0, (value - low) / (high - low))
            return tuple(round(a + share * (b - a)) for a, b in zip(low_rgb, high_rgb))
    return stops[-1][1]


def hex_colour(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def is_dark(rgb) -> bool:
    """Relative luminance (sRGB, WCAG's formula) below `DARK`."""
    linear = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2] < DARK


def background_style(rgb) -> str:
    """The inline style of a coloured box: its background, and white text on a dark one."""
    return f"background:{hex_colour(rgb)}" + (";color:#fff" if is_dark(rgb) else "")


def character_span(char: str, rgb, tooltip: str) -> str:
    """One character on its background, the tooltip shown on hover."""
    css_class = ' class="nl"' if char == "\n" else ""
    return f'<span{css_class} style="{background_style(rgb)}" title="{html.escape(tooltip)}">{html.escape(char)}</span>'


def swatch(label: str, value: float, rgb) -> str:
    """One box of a legend: `label` on the colour of `value`, which `data-value` holds for tools and tests."""
    return f'<span class="swatch" data-value="{value}" style="{background_style(rgb)}">{html.escape(label)}</span>'


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.summary {{ margin: 0 0 0.6em; }}
.legend {{ margin: 0 0 1em; font-size: 0.85em; }}
.legend span {{ display: inline-block; min-width: 2.2em; padding: 0.15em 0.3em; text-align: center; }}
.text {{ font-family: monospace; font-size: 14px; line-height: 1.5; white-space: pre-wrap; }}
.nl::before {{ content: "\\21B5"; color: #999; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ padding: 0.2em 0.7em; text-align: left; border-bottom: 1px solid #ddd; }}
td.number {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""


def page(title: str, body: str) -> str:
    """The whole page around `body` (HTML already escaped); `title` is escaped here."""
    return PAGE.format(title=html.escape(title), body=body)
