"""`python -m bench.ema_overhead`: what each extra EMA shadow costs (bench.hotpath.ema_overhead)."""

from .hotpath.ema_overhead import main

if __name__ == "__main__":
    main()
