# Stand-in for postgis/postgis:15-3.5 where no registry is reachable: Debian's PostgreSQL 15 and
# PostGIS 3, with an entrypoint that keeps the official image's interface (POSTGRES_USER,
# POSTGRES_PASSWORD, PGDATA=/var/lib/postgresql/data, scripts in /docker-entrypoint-initdb.d).
FROM cbm-base:bookworm
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       postgresql-15 postgresql-15-postgis-3 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /docker-entrypoint-initdb.d /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
