# Stand-in for redis:7-bookworm where no registry is reachable: Debian's redis-server.
# Like the official image: no persistence settings of its own, not in protected mode (the broker is
# reachable on the compose network only, never published).
FROM cbm-base:bookworm
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
USER redis
EXPOSE 6379
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/var/lib/redis"]
