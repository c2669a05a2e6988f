# tlsrelay container: a static binary on a distroless base that has CA
# certificates and a non-root user, and nothing else.
#
#   docker build -t tlsrelay .
#   docker run --rm -v "$PWD/tlsrelay.toml:/etc/tlsrelay/config.toml:ro" \
#     -v tlsrelay-spool:/var/spool/tlsrelay tlsrelay
#
# As a sidecar the application reaches it on localhost:2525 (listen on
# 127.0.0.1:2525 in the config). README.md, "Running as a sidecar", has
# the details.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=""
# distroless has no shell: the sendmail link and the directories are made
# here and copied. /usr/sbin/sendmail runs tlsrelay as sendmail (README,
# "For applications that run sendmail"); the drop directory is where it
# keeps a message while the relay is down (setgid, sticky, 3733).
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/bin/tlsrelay ./cmd/tlsrelay \
 && mkdir -p /out/spool /out/drop/importing /out/drop/refused /out/sbin \
 && chmod 700 /out/spool /out/drop/importing /out/drop/refused && chmod 3733 /out/drop \
 && ln -s /usr/local/bin/tlsrelay /out/sbin/sendmail

# distroless/static: ca-certificates, /etc/passwd with "nonroot" (65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/bin/tlsrelay /usr/local/bin/tlsrelay
# A directory copy keeps the symbolic link a link.
COPY --from=build /out/sbin/ /usr/sbin/
COPY --from=build --chown=65532:65532 /out/spool /var/spool/tlsrelay
COPY --from=build --chown=65532:65532 /out/drop /var/spool/tlsrelay-drop
USER 65532:65532
VOLUME ["/var/spool/tlsrelay"]
EXPOSE 2525
ENTRYPOINT ["/usr/local/bin/tlsrelay"]
CMD ["serve", "-config", "/etc/tlsrelay/config.toml"]
