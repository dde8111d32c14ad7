"""What the figures tests read off a drawn figure: its legend texts and panel titles."""

from apps.figures import plots


def legends(monkeypatch):
    """The legend texts and panel titles of every figure drawn from now on, by file stem."""
    seen = {}
    real_save = plots._save

    def save(plt, fig, out, stem):
        seen[stem] = [t.get_text() for legend in fig.legends for t in legend.texts]
        seen[stem + " titles"] = [ax.get_title(loc="left") for ax in fig.axes]
        return real_save(plt, fig, out, stem)

    monkeypatch.setattr(plots, "_save", save)
    return seen
