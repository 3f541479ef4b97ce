import { useEffect, useRef } from 'react';
import * as echarts from 'echarts';

// Chart renders an ECharts option into a div and resizes with the window.
export default function Chart({ option, testid, height = 260 }) {
  const el = useRef(null);
  const chart = useRef(null);
  useEffect(() => {
    chart.current = echarts.init(el.current, null, { renderer: 'canvas' });
    const onResize = () => chart.current && chart.current.resize();
    window.addEventListener('resize', onResize);
    return () => {
      window.removeEventListener('resize', onResize);
      chart.current.dispose();
      chart.current = null;
    };
  }, []);
  useEffect(() => {
    if (chart.current && option) chart.current.setOption(option, { notMerge: false, lazyUpdate: true });
  }, [option]);
  return <div ref={el} data-testid={testid} className="chart" style={{ height }} />;
}
