"""Draws a results dict of ``python -m benchmarks``: ratios and the
distribution of each timed workload's samples."""


def plot(results, path):
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["workloads"])
    timed = [n for n in names if results["workloads"][n]["unit"] == "s"]
    cols = 4
    rows = 1 + (len(timed) + cols - 1) // cols
    fig, grid = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows))
    axes = [grid[0][0]] + [ax for row in grid[1:] for ax in row]
    for ax in grid[0][1:]:
        ax.axis("off")
    for ax in axes[1 + len(timed):]:
        ax.axis("off")
    ratios = [results["workloads"][n]["ratio"] for n in names]
    ax = axes[0]
    ax.barh(names, ratios, color=["tab:green" if r <= 1 else "tab:red"
                                  for r in ratios])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("xthread / stdlib (lower is better)")
    ax.invert_yaxis()
    for ax, name in zip(axes[1:], timed):
        w = results["workloads"][name]
        labels = list(w["impls"])
        data = [[s * 1e6 for s in w["impls"][impl]["samples"]]
                for impl in labels]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(labels) + 1))
        ax.set_xticklabels(labels, rotation=20, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("us")
        ax.set_yscale("log")
    fig.suptitle("xthread vs threading, CPython %s (%s)"
                 % (results["python"], results["date"]))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
