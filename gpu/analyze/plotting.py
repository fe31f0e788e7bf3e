"""Plotting helpers shared by the analyses: pyplot on first use, hex colours from a colormap, and text laid
out as coloured monospace boxes (the PNG of a depth map)."""
from __future__ import annotations


def pyplot():
    """matplotlib.pyplot, imported on first use. The backend is left to matplotlib (Agg where there is no display,
    the inline backend in a notebook): forcing Agg here would silence a notebook's own plt.show() afterwards."""
    import matplotlib.pyplot as plt
    return plt


def hex_colour(v: float, cmap) -> str:
    """'#rrggbb' of the colormap at v in [0, 1]."""
    r, g, b, _ = cmap(v)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def text_figure(pieces, colours, title, width_chars: int = 100):
    """Tokens laid out as monospace text, each on a box of its colour; newlines shown as a return arrow and kept,
    lines wrapped at width_chars."""
    lines, line, used = [], [], 0
    for p, c in zip(pieces, colours):
        p = p.replace("\t", "    ")
        for j, chunk in enumerate(p.split("\n")):
            if j > 0:
                line.append(("\u21b5", c))
                lines.append(line)
                line, used = [], 0
            if chunk:
                if used + len(chunk) > width_chars and line:
                    lines.append(line)
                    line, used = [], 0
                line.append((chunk, c))
                used += len(chunk)
    lines.append(line)
    plt = pyplot()
    fs = 8
    cw, lh = fs * 0.602 / 72, fs * 1.7 / 72  # inches per character (DejaVu Sans Mono advance) and per line
    fig = plt.figure(figsize=((width_chars + 2) * cw, (len(lines) + 2) * lh))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width_chars + 2)
    ax.set_ylim(len(lines) + 2, 0)
    ax.axis("off")
    ax.text(1, 0.8, title, fontsize=fs, family="sans-serif", parse_math=False)
    for y, ln in enumerate(lines, start=1):
        x = 1
        for chunk, c in ln:
            ax.add_patch(plt.Rectangle((x, y + 0.5), len(chunk), 0.95, color=c, linewidth=0))
            ax.text(x, y + 1.2, chunk, family="DejaVu Sans Mono", fontsize=fs, parse_math=False)
            x += len(chunk)
    return fig
