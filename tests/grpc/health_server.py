"""A real grpc-core server for the pool's tests: the standard gRPC health
service on 127.0.0.1, with the stream limit (and optionally the maximum
connection age) given on the command line. Prints the port it listens on,
then serves until its standard input closes (the test that started it has
ended) or it is killed.

    python3 health_server.py --max-concurrent-streams 16 [--max-connection-age-ms 200]

Needs `grpcio` and `grpcio-health-checking` (pip).
"""

import argparse
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-concurrent-streams", type=int, required=True)
    parser.add_argument("--max-connection-age-ms", type=int)
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args()

    options = [("grpc.max_concurrent_streams", args.max_concurrent_streams)]
    if args.max_connection_age_ms:
        options.append(("grpc.max_connection_age_ms", args.max_connection_age_ms))
        # In-flight calls get this long to finish after the GOAWAY.
        options.append(("grpc.max_connection_age_grace_ms", 10_000))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers), options=options
    )
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
