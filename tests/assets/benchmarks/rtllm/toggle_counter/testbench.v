module testbench;
  reg clk = 0, reset = 1, enable = 0, toggle_in = 0;
  wire [7:0] count;
  toggle_counter uut(.clk(clk), .reset(reset), .enable(enable), .toggle_in(toggle_in), .count(count));
  always #5 clk = ~clk;
  initial begin
    #12 reset = 0; enable = 1;
    repeat (3) begin #10 toggle_in = 1; #10 toggle_in = 0; end
    #10 if (count == 8'd3) $display("===========Your Design Passed==========="); else $display("===========Error===========");
    $finish;
  end
endmodule
