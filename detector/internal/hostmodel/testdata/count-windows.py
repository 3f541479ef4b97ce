# Independent count of host windows (1 min, aligned to the epoch) of the
# labelled captures: per bidirectional 5-tuple, the window of its first packet
# (tshark fields, outer IP header); a window per endpoint address.
import csv, subprocess, ipaddress, sys, os
P = '/work/shared/data/pcaps'
def tuples(path):
    out = subprocess.run(['tshark','-r',path,'-n','-T','fields','-E','occurrence=f','-E','separator=\t',
        '-e','frame.time_epoch','-e','ip.src','-e','ip.dst','-e','ipv6.src','-e','ipv6.dst','-e','ip.proto','-e','ipv6.nxt',
        '-e','tcp.srcport','-e','tcp.dstport','-e','udp.srcport','-e','udp.dstport'], capture_output=True, text=True).stdout
    first = {}
    for line in out.splitlines():
        c = line.split('\t')
        src, dst, pr = c[1], c[2], c[5]
        if not src:
            src, dst, pr = c[3], c[4], c[6]
        if not src or not dst or not pr: continue
        sp, dp = (c[7], c[8]) if pr == '6' else ((c[9], c[10]) if pr == '17' else ('', ''))
        k = (pr, src, sp, dst, dp); rk = (pr, dst, dp, src, sp)
        if k in first or rk in first: continue
        first[k] = float(c[0])
    wins = set()
    for (pr, a, ap, b, bp), t in first.items():
        w = int(t // 60)
        wins.add((str(ipaddress.ip_address(a)), w)); wins.add((str(ipaddress.ip_address(b)), w))
    return wins
benign = attack = 0
caps = {}
for f, pre in ((os.path.join(P, '..', 'labeled', 'pcap-labels.csv'), ''), (os.path.join(P, 'lab', 'labels.csv'), 'lab/')):
    for r in csv.DictReader(open(f)):
        caps.setdefault(pre + r['file'], []).append(r)
for file, rs in caps.items():
    wins = tuples(os.path.join(P, file))
    if all(r['label'] == 'benign' for r in rs):
        benign += len(wins); continue
    aw = set()
    for r in rs:
        try: a = str(ipaddress.ip_address(r['attacker'].split()[0]))
        except Exception: continue
        s, e = r.get('start_epoch'), r.get('end_epoch')
        for (h, w) in wins:
            if h != a: continue
            if s and e and not (w*60 <= float(e) and w*60+60 > float(s)): continue
            aw.add((h, w))
    attack += len(aw)
print('benign', benign, 'attack', attack)
