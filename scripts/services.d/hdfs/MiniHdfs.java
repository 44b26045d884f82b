// A one-DataNode MiniDFSCluster for local tests, run without a build step:
//   java -cp "<hadoop lib>/*" MiniHdfs.java <namenode-rpc-port> <base-dir>
// (Java 11+ single-file source launch; scripts/services starts it.)
//
// Prints exactly one line "READY hdfs://127.0.0.1:<port>" on stdout once the
// NameNode is active, the DataNode registered and safe mode is off; all logging
// goes to stderr (log4j 1 / reload4j config passed by scripts/services).
//
// Data is kept across restarts: the first start formats <base-dir> and drops a
// marker file; later starts reuse the same name/data dirs (format(false)).
// SIGTERM/SIGINT stop the DataNode and NameNode cleanly through a signal
// handler (not a JVM shutdown hook: DataNode shutdown removes Hadoop shutdown
// hooks, which throws "Shutdown in progress" once the JVM is already exiting).
// SIGKILL is safe too: the NameNode syncs its edit log on every operation.

import java.io.File;
import java.nio.file.Files;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import sun.misc.Signal;

public class MiniHdfs {
    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: MiniHdfs <namenode-rpc-port> <base-dir>");
            System.exit(2);
        }
        int port = Integer.parseInt(args[0]);
        File base = new File(args[1]).getAbsoluteFile();
        Files.createDirectories(base.toPath());
        File marker = new File(base, ".camfleet-formatted");
        boolean format = !marker.exists();

        Configuration conf = new Configuration();
        // One DataNode: clients (hdfs-native sends the NameNode's default) must
        // not ask for more replicas than exist, or writes never complete.
        conf.setInt("dfs.replication", 1);
        // Tests write as whatever user runs them; no HDFS permission checks.
        conf.setBoolean("dfs.permissions.enabled", false);
        // Keep every file the cluster writes under base (not /tmp/hadoop-$USER).
        conf.set("hadoop.tmp.dir", new File(base, "tmp").getPath());
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, base.getPath());
        // Restarts on existing data: leave safe mode as soon as blocks are reported.
        conf.setInt("dfs.namenode.safemode.extension", 0);

        MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf, base)
                .nameNodePort(port)
                .nameNodeHttpPort(0)
                .numDataNodes(1)
                .format(format)
                .manageNameDfsDirs(true)
                .manageDataDfsDirs(true)
                .build();
        for (String name : new String[] {"TERM", "INT"}) {
            Signal.handle(new Signal(name), sig -> {
                System.err.println("MiniHdfs: SIG" + sig.getName() + ", shutting down");
                try {
                    // Not cluster.shutdown(): that always schedules the whole
                    // base dir for deletion at JVM exit (FileUtil
                    // .fullyDeleteOnExit), which would lose the data.
                    cluster.shutdownDataNodes();
                    cluster.shutdownNameNodes();
                } finally {
                    System.exit(0);
                }
            });
        }
        cluster.waitActive();
        long deadline = System.nanoTime() + 60_000_000_000L;
        while (cluster.getNamesystem().isInSafeMode()) {
            if (System.nanoTime() > deadline) {
                System.err.println("MiniHdfs: NameNode still in safe mode after 60 s");
                System.exit(1);
            }
            Thread.sleep(100);
        }
        if (format) {
            Files.writeString(marker.toPath(), "formatted\n");
        }
        System.out.println("READY hdfs://127.0.0.1:" + cluster.getNameNodePort());
        System.out.flush();
        // Keep the JVM alive; the daemons run on non-daemon threads anyway, but
        // don't rely on that.
        Thread.currentThread().join();
    }
}
