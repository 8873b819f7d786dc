# The uniqlog image: the static (musl) release binary alone, FROM scratch, so there is
# nothing else in it to patch and no base image to pull. scripts/image.sh builds the binary
# into deploy/image/uniqlog, then this image:
#   scripts/image.sh [TAG]          # default uniqlog:dev
FROM scratch
COPY deploy/image/passwd /etc/passwd
COPY deploy/image/group /etc/group
# Named volumes mounted here start as these directories are: owned by the uniqlog user.
COPY --chown=10001:10001 deploy/image/empty/ /data/
COPY --chown=10001:10001 deploy/image/empty/ /certs/
COPY deploy/image/uniqlog /uniqlog
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 7001 7101 7102
# Ready: a leader known and the commit index applied. Needs UNIQLOG_HEALTH_ADDR (and
# UNIQLOG_TLS_CA for a node serving TLS); `uniqlog health --live` asks only that it serves.
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/uniqlog", "health"]
ENTRYPOINT ["/uniqlog"]
CMD ["--help"]
