import java.nio.file.Path;

import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.configuration.ssl.ClientAuth;
import org.neo4j.configuration.ssl.SslPolicyConfig;
import org.neo4j.configuration.ssl.SslPolicyScope;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;

/**
 * A Neo4j Community server for the local test stack: the embedded database
 * with its Bolt connector switched on, listening on 127.0.0.1 only, without
 * authentication (what a throwaway test store needs).
 *
 * With -Dstack.bolt.tls.dir=DIR (server.key, server.crt and trusted/ made by
 * stack.sh), Bolt also accepts TLS on the same port (tls_level OPTIONAL):
 * plain clients keep working and the TLS tests need no second server.
 *
 * Usage: StackNeo4j HOME_DIR BOLT_PORT. Prints "READY <port>" once the
 * default database answers; SIGTERM shuts it down cleanly.
 */
public final class StackNeo4j {
    private StackNeo4j() {}

    public static void main(String[] args) throws InterruptedException {
        if (args.length != 2) {
            System.err.println("usage: StackNeo4j HOME_DIR BOLT_PORT");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        int port = Integer.parseInt(args[1]);
        DatabaseManagementServiceBuilder builder = new DatabaseManagementServiceBuilder(home);
        String tlsDir = System.getProperty("stack.bolt.tls.dir");
        if (tlsDir != null) {
            Path tls = Path.of(tlsDir).toAbsolutePath();
            SslPolicyConfig bolt = SslPolicyConfig.forScope(SslPolicyScope.BOLT);
            builder.setConfig(bolt.enabled, true)
                    .setConfig(bolt.base_directory, tls)
                    .setConfig(bolt.private_key, tls.resolve("server.key"))
                    .setConfig(bolt.public_certificate, tls.resolve("server.crt"))
                    .setConfig(bolt.trusted_dir, tls.resolve("trusted"))
                    .setConfig(bolt.revoked_dir, tls.resolve("revoked"))
                    .setConfig(bolt.client_auth, ClientAuth.NONE)
                    .setConfig(BoltConnector.encryption_level, BoltConnector.EncryptionLevel.OPTIONAL);
        }
        DatabaseManagementService dbms = builder
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                .setConfig(GraphDatabaseSettings.auth_enabled, false)
                // Small caches: several stacks share a 2-core test machine.
                .setConfig(GraphDatabaseSettings.pagecache_memory, 64L << 20)
                .setConfig(GraphDatabaseSettings.udc_enabled, false)
                .build();
        Runtime.getRuntime().addShutdownHook(new Thread(dbms::shutdown, "stack-neo4j-shutdown"));
        // Opening the default database waits until it is available.
        dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME).executeTransactionally("RETURN 1");
        System.out.println("READY " + port);
        System.out.flush();
        Thread.currentThread().join();
    }
}
